using k8s.Models;
using NbdOperator.Runtime;

namespace NbdOperator.Tests.Runtime;

public class ObjectCacheTests
{
    internal static V1Pod Pod(string name, string rv = "1", string? ownerUid = null, string ns = "ns") => new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = name,
            NamespaceProperty = ns,
            ResourceVersion = rv,
            Uid = $"uid-{name}",
            OwnerReferences = ownerUid is null ? null : [new V1OwnerReference { Uid = ownerUid, Name = "owner", Kind = "NbdExport", ApiVersion = "nbdoperator.io/v1alpha1" }],
        },
    };

    [Fact]
    public void Upsert_ThenGet_ReturnsTheObjectAndTheReplacedOne()
    {
        var cache = new ObjectCache<V1Pod>();

        Assert.Null(cache.Upsert(Pod("a")));
        var old = cache.Upsert(Pod("a", "2"));

        Assert.Equal("1", old!.Metadata.ResourceVersion);
        Assert.Equal("2", cache.Get("ns", "a")!.Metadata.ResourceVersion);
        Assert.Equal(1, cache.Count);
    }

    [Fact]
    public void List_ByNamespace_FiltersOthers()
    {
        var cache = new ObjectCache<V1Pod>();
        cache.Upsert(Pod("a"));
        cache.Upsert(Pod("b", ns: "other"));

        Assert.Single(cache.List("ns"));
        Assert.Equal(2, cache.List().Count);
    }

    [Fact]
    public void OwnerIndex_FollowsUpsertsAndRemoves()
    {
        var cache = new ObjectCache<V1Pod>();
        cache.Upsert(Pod("a", ownerUid: "o1"));
        cache.Upsert(Pod("b", ownerUid: "o1"));
        cache.Upsert(Pod("c", ownerUid: "o2"));

        Assert.Equal(["a", "b"], cache.ListOwnedBy("o1").Select(p => p.Metadata.Name).Order());

        cache.Upsert(Pod("b", "2", ownerUid: "o2")); // the owner changed
        cache.Remove(new ObjectKey("ns", "a"));

        Assert.Empty(cache.ListOwnedBy("o1"));
        Assert.Equal(["b", "c"], cache.ListOwnedBy("o2").Select(p => p.Metadata.Name).Order());
    }

    [Fact]
    public void Replace_ReportsAddedUpdatedAndDeleted()
    {
        var cache = new ObjectCache<V1Pod>();
        cache.Upsert(Pod("keep"));
        cache.Upsert(Pod("change"));
        cache.Upsert(Pod("gone", ownerUid: "o"));

        var delta = cache.Replace([Pod("keep"), Pod("change", "5"), Pod("new")]);

        Assert.Equal(["new"], delta.Added.Select(p => p.Metadata.Name));
        Assert.Equal(["change"], delta.Updated.Select(u => u.New.Metadata.Name));
        Assert.Equal(["gone"], delta.Deleted.Select(p => p.Metadata.Name));
        Assert.Null(cache.Get("ns", "gone"));
        Assert.Empty(cache.ListOwnedBy("o"));
        Assert.Equal(3, cache.Count);
    }

    [Fact]
    public async Task ConcurrentReadersAndWriters_KeepTheIndexConsistent()
    {
        var cache = new ObjectCache<V1Pod>();
        var writers = Enumerable.Range(0, 4).Select(w => Task.Run(() =>
        {
            for (var i = 0; i < 2000; i++)
            {
                var name = $"p{(i * 7 + w) % 50}";
                if (i % 3 == 0)
                {
                    cache.Remove(new ObjectKey("ns", name));
                }
                else
                {
                    cache.Upsert(Pod(name, i.ToString(System.Globalization.CultureInfo.InvariantCulture), ownerUid: $"o{i % 3}"));
                }
            }
        }, TestContext.Current.CancellationToken));
        var readers = Enumerable.Range(0, 2).Select(_ => Task.Run(() =>
        {
            for (var i = 0; i < 2000; i++)
            {
                foreach (var pod in cache.ListOwnedBy($"o{i % 3}"))
                {
                    Assert.NotNull(pod.Metadata.Name);
                }

                Assert.All(cache.List(), p => Assert.NotNull(p.Metadata.Name));
            }
        }, TestContext.Current.CancellationToken));

        await Task.WhenAll(writers.Concat(readers));

        // Every object is indexed under exactly its own owner.
        var all = cache.List();
        var indexed = Enumerable.Range(0, 3).SelectMany(o => cache.ListOwnedBy($"o{o}")).ToList();
        Assert.Equal(all.Count, indexed.Count);
        Assert.All(indexed, p => Assert.Contains(p, all));
    }
}
