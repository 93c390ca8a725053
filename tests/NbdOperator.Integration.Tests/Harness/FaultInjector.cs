using System.Collections.Concurrent;
using System.Net;
using System.Text;
using System.Web;

namespace NbdOperator.Integration.Tests.Harness;

/// <summary>
/// A handler on the operator's client that injects the faults a real cluster produces now and then:
/// 409 Conflict on status writes, watch streams that break mid-way, and re-watches from a resourceVersion
/// so old the apiserver answers 410 Gone (a real one, from the apiserver's watch cache).
/// </summary>
public sealed class FaultInjector : DelegatingHandler
{
    private readonly ConcurrentDictionary<DroppableStream, byte> _watches = new();
    private int _conflictsLeft;
    private int _goneLeft;
    private int _conflicts;
    private int _gone;
    private int _dropped;

    /// <summary>Status writes of NbdExports answered with a synthetic 409 so far.</summary>
    public int Conflicts => _conflicts;

    /// <summary>Watches sent from resourceVersion 1 (answered 410 by the apiserver) so far.</summary>
    public int Gone => _gone;

    /// <summary>Watch streams broken so far.</summary>
    public int Dropped => _dropped;

    /// <summary>The next <paramref name="count"/> NbdExport status writes fail with 409 Conflict.</summary>
    public void FailStatusWrites(int count) => Interlocked.Exchange(ref _conflictsLeft, count);

    /// <summary>The next <paramref name="count"/> watch requests start from a long-compacted resourceVersion.</summary>
    public void ForceGone(int count) => Interlocked.Exchange(ref _goneLeft, count);

    /// <summary>Breaks every open watch stream (the informers see an I/O error mid-stream).</summary>
    public void DropWatches()
    {
        foreach (var stream in _watches.Keys)
        {
            stream.Drop();
            Interlocked.Increment(ref _dropped);
        }
    }

    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        var uri = request.RequestUri!;
        var query = HttpUtility.ParseQueryString(uri.Query);
        var watch = query["watch"] == "true";

        if (request.Method == HttpMethod.Put && uri.AbsolutePath.Contains("/nbdexports/", StringComparison.Ordinal) &&
            uri.AbsolutePath.EndsWith("/status", StringComparison.Ordinal) && Interlocked.Decrement(ref _conflictsLeft) >= 0)
        {
            Interlocked.Increment(ref _conflicts);
            const string Body = """{"kind":"Status","apiVersion":"v1","status":"Failure","message":"Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again","reason":"Conflict","code":409}""";
            return new HttpResponseMessage(HttpStatusCode.Conflict)
            {
                RequestMessage = request,
                Content = new StringContent(Body, Encoding.UTF8, "application/json"),
            };
        }

        if (watch && Interlocked.Decrement(ref _goneLeft) >= 0)
        {
            Interlocked.Increment(ref _gone);
            query["resourceVersion"] = "1";
            request.RequestUri = new UriBuilder(uri) { Query = query.ToString() }.Uri;
        }

        var response = await base.SendAsync(request, cancellationToken);
        if (watch && response.IsSuccessStatusCode)
        {
            var inner = await response.Content.ReadAsStreamAsync(cancellationToken);
            var droppable = new DroppableStream(inner, s => _watches.TryRemove(s, out _));
            _watches[droppable] = 0;
            var content = new StreamContent(droppable);
            foreach (var header in response.Content.Headers)
            {
                content.Headers.TryAddWithoutValidation(header.Key, header.Value);
            }

            response.Content = content;
        }

        return response;
    }

    private sealed class DroppableStream(Stream inner, Action<DroppableStream> onDispose) : Stream
    {
        private readonly CancellationTokenSource _drop = new();

        public void Drop() => _drop.Cancel();

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _drop.Token);
            try
            {
                return await inner.ReadAsync(buffer, linked.Token);
            }
            catch (OperationCanceledException) when (_drop.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
            {
                throw new IOException("the test dropped this watch");
            }
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer, offset, count).GetAwaiter().GetResult();

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                onDispose(this);
                inner.Dispose();
                _drop.Dispose();
            }

            base.Dispose(disposing);
        }
    }
}
