using Nbd.Interop.Tests.Infrastructure;

namespace Nbd.Interop.Tests.Server;

/// <summary>
/// libnbd's nbdsh with strict mode relaxed, so it sends what a careless or hostile client would: requests
/// out of range, zero-length requests, unknown flags, writes to a read-only export.
/// </summary>
public class NbdshTests
{
    private const string Prelude = """
        import errno
        def expect(errnum, f, *args, **kwargs):
            try:
                f(*args, **kwargs)
            except nbd.Error as e:
                assert e.errnum == errnum, "%s: errno %s, expected %s (%s)" % (f.__name__, e.errnum, errnum, e)
                return
            raise AssertionError("%s succeeded, expected errno %d" % (f.__name__, errnum))
        h.set_strict_mode(0)
        size = h.get_size()

        """;

    private static void RunScript(string uri, string script)
    {
        Peers.Require("nbdsh");
        Peers.Run("nbdsh", "--base-allocation", "-u", uri, "-c", Prelude + script).Check("nbdsh");
    }

    [Theory]
    [InlineData("unix")]
    [InlineData("tcp")]
    public void FlagsOutOfRangeAndZeroLength(string transport)
    {
        using var dir = new TempDir();
        var image = dir.SparseImage("disk.img", 8 << 20);
        using var server = SidecarServer.Start("--export", $"disk={image}");
        RunScript(server.Uri(transport), """
            assert size == 8 << 20
            assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero() and h.can_fast_zero()
            assert h.can_multi_conn() and h.can_cache() and h.can_df() and not h.is_read_only()
            assert h.can_meta_context("base:allocation")
            assert h.get_structured_replies_negotiated()

            # Out of range: reads, trims and block status say EINVAL, writes ENOSPC.
            expect(errno.EINVAL, h.pread, 512, size - 511)
            expect(errno.EINVAL, h.pread, 1, size)
            expect(errno.ENOSPC, h.pwrite, b"x" * 512, size - 511)
            expect(errno.ENOSPC, h.zero, 4096, size - 4095)
            expect(errno.EINVAL, h.trim, 4096, size)
            expect(errno.EINVAL, h.block_status, 512, size, lambda *a: 0)
            expect(errno.EINVAL, h.pread, 33554433, 0)

            # Unknown and misplaced command flags are EINVAL.
            expect(errno.EINVAL, h.pread, 512, 0, 0x80)
            expect(errno.EINVAL, h.pwrite, b"x" * 512, 0, nbd.CMD_FLAG_REQ_ONE)
            expect(errno.EINVAL, h.flush, nbd.CMD_FLAG_NO_HOLE)

            # Zero-length requests succeed and change nothing.
            assert h.pread(0, 0) == b""
            h.pwrite(b"", 4096)
            h.trim(0, 4096)
            h.zero(0, 4096)
            h.cache(0, 0)

            # Ordinary traffic still works after all of that.
            h.pwrite(b"abc" * 1000, 12345, nbd.CMD_FLAG_FUA)
            assert h.pread(3000, 12345) == b"abc" * 1000
            assert h.pread(3000, 12345, nbd.CMD_FLAG_DF) == b"abc" * 1000
            h.zero(3000, 12345, nbd.CMD_FLAG_NO_HOLE)
            assert h.pread(3000, 12345) == bytes(3000)
            h.cache(65536, 0)
            h.flush()
            """);
    }

    [Fact]
    public void ReadOnlyExport_RefusesWritesWithEperm()
    {
        using var server = SidecarServer.StartUnixOnly("--export", "disk=memory:8M", "--read-only");
        RunScript(server.UnixUri(), """
            assert h.is_read_only()
            expect(errno.EPERM, h.pwrite, b"x" * 512, 0)
            expect(errno.EPERM, h.trim, 512, 0)
            expect(errno.EPERM, h.zero, 512, 0)
            assert h.pread(512, 0) == bytes(512)
            h.flush()
            """);
    }

    [Fact]
    public void BlockStatus_ReportsHolesAndData()
    {
        using var dir = new TempDir();
        var image = dir.SparseImage("disk.img", 8 << 20, (1 << 20, new byte[] { 1, 2, 3 }));
        using var server = SidecarServer.StartUnixOnly("--export", $"disk={image}");
        RunScript(server.UnixUri(), """
            seen = []
            def cb(metacontext, offset, entries, err):
                seen.extend(entries)
            h.block_status(size, 0, cb)
            assert seen[0:2] == [1 << 20, 3], seen
            assert seen[3] == 0, seen
            seen.clear()
            h.block_status(100, 1 << 20, cb, nbd.CMD_FLAG_REQ_ONE)
            assert len(seen) == 2 and seen[0] <= 100 and seen[1] == 0, seen
            """);
    }
}
