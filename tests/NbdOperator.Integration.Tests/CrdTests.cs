using System.Net;
using System.Text.Json.Nodes;
using k8s;
using k8s.Autorest;
using NbdOperator.Api;
using NbdOperator.Integration.Tests.Harness;

namespace NbdOperator.Integration.Tests;

/// <summary>The generated CRDs on a real 1.20 apiserver: accepted, structural, validating and defaulting.</summary>
public class CrdTests(KubeFixture fixture)
{
    private async Task<HttpOperationException> CreateRejected(string ns, string plural, string json)
    {
        var body = JsonNode.Parse(json)!;
        return await Assert.ThrowsAsync<HttpOperationException>(() =>
            fixture.Client.CustomObjects.CreateNamespacedCustomObjectAsync(body, NbdApi.Group, NbdApi.Version, ns, plural));
    }

    [Fact]
    public async Task Crds_AreEstablishedAndStructural()
    {
        fixture.RequireApiServer();
        foreach (var name in new[] { "nbdexports.nbdoperator.io", "nbdimports.nbdoperator.io" })
        {
            var crd = await fixture.Client.ApiextensionsV1.ReadCustomResourceDefinitionAsync(name, cancellationToken: TestContext.Current.CancellationToken);

            Assert.Contains(crd.Status.Conditions, c => c.Type == "Established" && c.Status == "True");
            Assert.DoesNotContain(crd.Status.Conditions, c => c.Type == "NonStructuralSchema" && c.Status == "True");
        }
    }

    [Fact]
    public async Task NbdExport_BadFields_AreRejectedByTheSchema()
    {
        fixture.RequireApiServer();
        var ns = await fixture.CreateNamespaceAsync("crd-reject");
        try
        {
            const string Base = """{"apiVersion":"nbdoperator.io/v1alpha1","kind":"NbdExport","metadata":{"name":"bad"},"spec":""";
            var cases = new Dictionary<string, string>
            {
                ["port out of range"] = Base + """{"source":{"persistentVolumeClaim":{"claimName":"d"}},"port":70000}}""",
                ["unknown service type"] = Base + """{"source":{"persistentVolumeClaim":{"claimName":"d"}},"service":{"type":"External"}}}""",
                ["ttl not a duration"] = Base + """{"source":{"persistentVolumeClaim":{"claimName":"d"}},"ttl":"two hours"}}""",
                ["no source"] = Base + """{"port":10809}}""",
                ["no claimName"] = Base + """{"source":{"persistentVolumeClaim":{}}}}""",
                ["claimName not a name"] = Base + """{"source":{"persistentVolumeClaim":{"claimName":"Not_A_Name"}}}}""",
                ["exportName with a slash"] = Base + """{"source":{"persistentVolumeClaim":{"claimName":"d"}},"exportName":"a/b"}}""",
                ["no spec"] = """{"apiVersion":"nbdoperator.io/v1alpha1","kind":"NbdExport","metadata":{"name":"bad"}}""",
            };
            foreach (var (what, json) in cases)
            {
                var e = await CreateRejected(ns, NbdExport.Plural, json);
                Assert.True(e.Response.StatusCode == HttpStatusCode.UnprocessableEntity, $"{what}: {e.Response.StatusCode} {e.Response.Content}");
            }
        }
        finally
        {
            await fixture.DeleteNamespaceAsync(ns);
        }
    }

    [Fact]
    public async Task NbdImport_BadFields_AreRejectedByTheSchema()
    {
        fixture.RequireApiServer();
        var ns = await fixture.CreateNamespaceAsync("crd-reject-imp");
        try
        {
            const string Base = """{"apiVersion":"nbdoperator.io/v1alpha1","kind":"NbdImport","metadata":{"name":"bad"},"spec":""";
            string[] bad =
            [
                Base + """{"source":{"nbd":{"url":"http://x/disk"}},"target":{"persistentVolumeClaim":{"claimName":"t"}}}}""",
                Base + """{"source":{"nbd":{"url":"nbd://x/disk"}},"target":{"pvcTemplate":{"volumeMode":"Tape"}}}}""",
                Base + """{"source":{"nbd":{"url":"nbd://x/disk"}},"target":{"persistentVolumeClaim":{"claimName":"t"}},"transfer":{"connections":99}}}""",
                Base + """{"source":{"nbd":{"url":"nbd://x/disk"}}}}""",
            ];
            foreach (var json in bad)
            {
                var e = await CreateRejected(ns, NbdImport.Plural, json);
                Assert.Equal(HttpStatusCode.UnprocessableEntity, e.Response.StatusCode);
            }
        }
        finally
        {
            await fixture.DeleteNamespaceAsync(ns);
        }
    }

    [Fact]
    public async Task NbdExport_Minimal_GetsTheSchemaDefaults()
    {
        fixture.RequireApiServer();
        var ns = await fixture.CreateNamespaceAsync("crd-defaults");
        try
        {
            var created = await fixture.Client.CustomObjects.CreateNamespacedCustomObjectAsync<NbdExport>(
                TestCluster.NewExport("minimal", "disk"), NbdApi.Group, NbdApi.Version, ns, NbdExport.Plural,
                cancellationToken: TestContext.Current.CancellationToken);

            Assert.Equal((true, 10809), (created.Spec.ReadOnly, created.Spec.Port));
            Assert.Equal(1, created.Metadata.Generation);
        }
        finally
        {
            await fixture.DeleteNamespaceAsync(ns);
        }
    }

    [Fact]
    public async Task Samples_AreAcceptedByTheApiserver()
    {
        fixture.RequireApiServer();
        var ns = await fixture.CreateNamespaceAsync("crd-samples");
        try
        {
            var kinds = new Dictionary<string, Type>
            {
                ["nbdoperator.io/v1alpha1/NbdExport"] = typeof(NbdExport),
                ["nbdoperator.io/v1alpha1/NbdImport"] = typeof(NbdImport),
                ["snapshot.storage.k8s.io/v1/VolumeSnapshot"] = typeof(VolumeSnapshot),
            };
            var count = 0;
            // The migration example's KubeVirt VirtualMachine needs KubeVirt's CRDs, which this apiserver does not have.
            foreach (var file in Directory.GetFiles(Path.Combine(KubeFixture.RepoRoot, "crds", "samples"), "*.yaml", SearchOption.AllDirectories)
                         .Where(f => !f.EndsWith("virtualmachine.yaml", StringComparison.Ordinal)))
            {
                foreach (var obj in KubernetesYaml.LoadAllFromString(await File.ReadAllTextAsync(file, TestContext.Current.CancellationToken), kinds))
                {
                    var (group, version, plural) = obj switch
                    {
                        NbdExport => (NbdApi.Group, NbdApi.Version, NbdExport.Plural),
                        NbdImport => (NbdApi.Group, NbdApi.Version, NbdImport.Plural),
                        VolumeSnapshot => (VolumeSnapshot.Group, VolumeSnapshot.Version, VolumeSnapshot.Plural),
                        _ => throw new InvalidOperationException($"{file}: unexpected {obj.GetType()}"),
                    };
                    // Samples that name their namespace (the migration example) are checked in the test namespace.
                    ((IKubernetesObject<k8s.Models.V1ObjectMeta>)obj).Metadata.NamespaceProperty = null;
                    await fixture.Client.CustomObjects.CreateNamespacedCustomObjectAsync(obj, group, version, ns, plural, dryRun: "All",
                        fieldManager: "samples-test", cancellationToken: TestContext.Current.CancellationToken);
                    count++;
                }
            }

            Assert.True(count >= 6, $"only {count} sample objects");
        }
        finally
        {
            await fixture.DeleteNamespaceAsync(ns);
        }
    }
}
