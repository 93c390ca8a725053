using System.Diagnostics;
using k8s;
using k8s.Models;
using Microsoft.Extensions.Logging;

namespace NbdOperator.Runtime;

/// <summary>Start/stop and sync state of an informer of any type (for the manager and readiness).</summary>
public interface IInformer
{
    string Resource { get; }
    bool HasSynced { get; }

    /// <summary>Lists done so far (the first one and every relist).</summary>
    int Lists { get; }

    /// <summary>Watches started so far.</summary>
    int Watches { get; }
    Task WaitForSyncAsync(CancellationToken cancellationToken);
    Task RunAsync(CancellationToken cancellationToken);
}

/// <summary>
/// Lists, then watches one resource type into an <see cref="ObjectCache{T}"/> and tells handlers about
/// changes. A watch that ends is resumed from the last resourceVersion seen (events and bookmarks);
/// 410 Gone relists (handlers hear about whatever changed meanwhile); other errors back off with jitter.
/// Handlers run on the informer's loop and must be quick (they enqueue keys).
/// </summary>
public sealed class Informer<T> : IInformer
    where T : class, IKubernetesObject<V1ObjectMeta>
{
    private readonly IListWatch<T> _listWatch;
    private readonly ILogger _logger;
    private readonly Backoff _backoff;
    private readonly TaskCompletionSource _synced = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly List<Action<T>> _onAdd = [];
    private readonly List<Action<T, T>> _onUpdate = [];
    private readonly List<Action<T>> _onDelete = [];

    public Informer(IListWatch<T> listWatch, ILogger logger, Backoff? backoff = null)
    {
        _listWatch = listWatch;
        _logger = logger;
        _backoff = backoff ?? new Backoff(TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(30));
    }

    public ObjectCache<T> Cache { get; } = new();

    public string Resource => _listWatch.Resource;

    public bool HasSynced => _synced.Task.IsCompleted;

    /// <summary>Lists done since start (1 + relists after 410 Gone or failed watches without a resourceVersion).</summary>
    public int Lists { get; private set; }

    /// <summary>Watches started since start.</summary>
    public int Watches { get; private set; }

    /// <summary>The resourceVersion the next watch starts from.</summary>
    public string? LastResourceVersion { get; private set; }

    public void OnAdd(Action<T> handler) => _onAdd.Add(handler);

    public void OnUpdate(Action<T, T> handler) => _onUpdate.Add(handler);

    public void OnDelete(Action<T> handler) => _onDelete.Add(handler);

    /// <summary>Calls <paramref name="handler"/> for every add, update and delete with the object concerned (the new one on updates).</summary>
    public void OnAny(Action<T> handler)
    {
        OnAdd(handler);
        OnUpdate((_, obj) => handler(obj));
        OnDelete(handler);
    }

    public Task WaitForSyncAsync(CancellationToken cancellationToken) => _synced.Task.WaitAsync(cancellationToken);

    public async Task RunAsync(CancellationToken cancellationToken)
    {
        string? resourceVersion = null;
        var failures = 0;
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                if (resourceVersion is null)
                {
                    var (items, listVersion) = await _listWatch.ListAsync(cancellationToken);
                    Lists++;
                    var delta = Cache.Replace(items);
                    resourceVersion = LastResourceVersion = listVersion;
                    Dispatch(delta);
                    _synced.TrySetResult();
                    failures = 0;
                }

                Watches++;
                var watchStarted = Stopwatch.GetTimestamp();
                var events = 0;
                await foreach (var (type, obj) in _listWatch.WatchAsync(resourceVersion, cancellationToken))
                {
                    failures = 0;
                    events++;
                    resourceVersion = LastResourceVersion = obj.Metadata?.ResourceVersion ?? resourceVersion;
                    switch (type)
                    {
                        case WatchEventType.Added:
                        case WatchEventType.Modified:
                            var old = Cache.Upsert(obj);
                            if (old is null)
                            {
                                Notify(_onAdd, h => h(obj));
                            }
                            else
                            {
                                Notify(_onUpdate, h => h(old, obj));
                            }

                            break;
                        case WatchEventType.Deleted:
                            Cache.Remove(ObjectKey.Of(obj));
                            Notify(_onDelete, h => h(obj));
                            break;
                        case WatchEventType.Bookmark:
                            // Only the resourceVersion matters: it lets the next watch resume from here.
                            break;
                        default:
                            _logger.LogWarning("{Resource}: unexpected watch event {Type}", Resource, type);
                            break;
                    }
                }

                // The server closed the watch (its timeout): resume from where we are. A watch that ends at
                // once without a single event is treated as a failure, so a misbehaving server is not hammered.
                if (events == 0 && Stopwatch.GetElapsedTime(watchStarted) < TimeSpan.FromSeconds(1))
                {
                    await Task.Delay(_backoff.Delay(failures++), cancellationToken);
                }

                if (_logger.IsEnabled(LogLevel.Debug))
                {
                    _logger.LogDebug("{Resource}: watch closed at resourceVersion {ResourceVersion}; watching again", Resource, resourceVersion);
                }
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                break;
            }
            catch (Exception e) when (ListWatches.IsGone(e))
            {
                if (_logger.IsEnabled(LogLevel.Information))
                {
                    _logger.LogInformation("{Resource}: resourceVersion {ResourceVersion} is gone (410); listing again", Resource, resourceVersion);
                }

                resourceVersion = null;
            }
            catch (Exception e)
            {
                var delay = _backoff.Delay(failures++);
                if (_logger.IsEnabled(LogLevel.Warning))
                {
                    _logger.LogWarning("{Resource}: {Operation} failed ({Error}); retrying in {Delay} ms", Resource,
                    resourceVersion is null ? "list" : "watch", e.Message, (int)delay.TotalMilliseconds);
                }

                try
                {
                    await Task.Delay(delay, cancellationToken);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
            }
        }
    }

    private void Dispatch(CacheDelta<T> delta)
    {
        foreach (var obj in delta.Deleted)
        {
            Notify(_onDelete, h => h(obj));
        }

        foreach (var (old, obj) in delta.Updated)
        {
            Notify(_onUpdate, h => h(old, obj));
        }

        foreach (var obj in delta.Added)
        {
            Notify(_onAdd, h => h(obj));
        }
    }

    private void Notify<THandler>(List<THandler> handlers, Action<THandler> call)
    {
        foreach (var handler in handlers)
        {
            try
            {
                call(handler);
            }
            catch (Exception e)
            {
                // A faulty handler must not stop the informer.
                _logger.LogError(e, "{Resource}: event handler failed", Resource);
            }
        }
    }
}
