using k8s;
using k8s.Models;

namespace NbdOperator.Runtime;

/// <summary>
/// The thread-safe store behind an informer: objects by namespace/name, and an owner index
/// (owner UID → keys of the objects whose ownerReferences name it). Readers get the stored
/// instances; they must treat them as read-only (copy before changing).
/// </summary>
public sealed class ObjectCache<T>
    where T : class, IKubernetesObject<V1ObjectMeta>
{
    private readonly Dictionary<ObjectKey, T> _items = [];
    private readonly Dictionary<string, HashSet<ObjectKey>> _byOwner = [];
    private readonly Lock _lock = new();

    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _items.Count;
            }
        }
    }

    public T? Get(ObjectKey key)
    {
        lock (_lock)
        {
            return _items.GetValueOrDefault(key);
        }
    }

    public T? Get(string? ns, string name) => Get(new ObjectKey(ns, name));

    /// <summary>All objects, or those of one namespace.</summary>
    public IReadOnlyList<T> List(string? ns = null)
    {
        lock (_lock)
        {
            return ns is null
                ? [.. _items.Values]
                : [.. _items.Where(kv => kv.Key.Namespace == ns).Select(kv => kv.Value)];
        }
    }

    /// <summary>The objects that carry an owner reference to <paramref name="ownerUid"/>.</summary>
    public IReadOnlyList<T> ListOwnedBy(string ownerUid)
    {
        lock (_lock)
        {
            return _byOwner.TryGetValue(ownerUid, out var keys)
                ? [.. keys.Select(k => _items[k])]
                : [];
        }
    }

    /// <summary>Inserts or replaces an object; returns the one it replaced.</summary>
    public T? Upsert(T obj)
    {
        var key = ObjectKey.Of(obj);
        lock (_lock)
        {
            var old = _items.GetValueOrDefault(key);
            if (old is not null)
            {
                Unindex(key, old);
            }

            _items[key] = obj;
            Index(key, obj);
            return old;
        }
    }

    /// <summary>Removes an object; returns the removed instance, if there was one.</summary>
    public T? Remove(ObjectKey key)
    {
        lock (_lock)
        {
            if (!_items.Remove(key, out var old))
            {
                return null;
            }

            Unindex(key, old);
            return old;
        }
    }

    /// <summary>
    /// Replaces the whole content with a fresh list (after a relist) and returns what changed, so
    /// that the informer can tell its handlers about objects added, updated and deleted meanwhile.
    /// </summary>
    public CacheDelta<T> Replace(IEnumerable<T> items)
    {
        var added = new List<T>();
        var updated = new List<(T Old, T New)>();
        var deleted = new List<T>();
        lock (_lock)
        {
            var fresh = new Dictionary<ObjectKey, T>();
            foreach (var item in items)
            {
                fresh[ObjectKey.Of(item)] = item;
            }

            foreach (var (key, old) in _items)
            {
                if (!fresh.ContainsKey(key))
                {
                    deleted.Add(old);
                }
            }

            foreach (var (key, item) in fresh)
            {
                if (_items.TryGetValue(key, out var old))
                {
                    if (old.Metadata.ResourceVersion != item.Metadata.ResourceVersion)
                    {
                        updated.Add((old, item));
                    }
                }
                else
                {
                    added.Add(item);
                }
            }

            _items.Clear();
            _byOwner.Clear();
            foreach (var (key, item) in fresh)
            {
                _items[key] = item;
                Index(key, item);
            }
        }

        return new CacheDelta<T>(added, updated, deleted);
    }

    private void Index(ObjectKey key, T obj)
    {
        foreach (var owner in obj.Metadata.OwnerReferences ?? [])
        {
            if (!_byOwner.TryGetValue(owner.Uid, out var keys))
            {
                _byOwner[owner.Uid] = keys = [];
            }

            keys.Add(key);
        }
    }

    private void Unindex(ObjectKey key, T obj)
    {
        foreach (var owner in obj.Metadata.OwnerReferences ?? [])
        {
            if (_byOwner.TryGetValue(owner.Uid, out var keys) && keys.Remove(key) && keys.Count == 0)
            {
                _byOwner.Remove(owner.Uid);
            }
        }
    }
}

/// <summary>What a relist changed in a cache.</summary>
public sealed record CacheDelta<T>(IReadOnlyList<T> Added, IReadOnlyList<(T Old, T New)> Updated, IReadOnlyList<T> Deleted);
