namespace NbdSidecar.NodePlugin;

/// <summary>
/// One asynchronous lock per volume id: every Node RPC for a volume runs under it, so stage, publish,
/// unpublish and unstage of one volume never interleave, while different volumes proceed in parallel.
/// </summary>
public sealed class VolumeLocks
{
    private readonly Dictionary<string, (SemaphoreSlim Gate, int Users)> _locks = new(StringComparer.Ordinal);
    private readonly Lock _gate = new();

    /// <summary>Waits for the volume's lock; dispose the result to release it.</summary>
    public async Task<IDisposable> AcquireAsync(string volumeId, CancellationToken cancellationToken)
    {
        SemaphoreSlim semaphore;
        lock (_gate)
        {
            if (!_locks.TryGetValue(volumeId, out var entry))
            {
                entry = (new SemaphoreSlim(1, 1), 0);
            }

            semaphore = entry.Gate;
            _locks[volumeId] = (semaphore, entry.Users + 1);
        }

        try
        {
            await semaphore.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            Release(volumeId, held: false);
            throw;
        }

        return new Holder(this, volumeId);
    }

    private void Release(string volumeId, bool held)
    {
        lock (_gate)
        {
            var (semaphore, users) = _locks[volumeId];
            if (held)
            {
                semaphore.Release();
            }

            if (users == 1)
            {
                _locks.Remove(volumeId);
                semaphore.Dispose();
            }
            else
            {
                _locks[volumeId] = (semaphore, users - 1);
            }
        }
    }

    private sealed class Holder(VolumeLocks owner, string volumeId) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0)
            {
                owner.Release(volumeId, held: true);
            }
        }
    }
}
