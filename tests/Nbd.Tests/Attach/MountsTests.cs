using Nbd.Attach;

namespace Nbd.Tests.Attach;

/// <summary>Parsing /proc/self/mountinfo (proc(5)): optional fields, octal escapes, malformed lines.</summary>
public sealed class MountsTests
{
    [Fact]
    public void Parse_RealLines_WithOptionalFieldsAndEscapes()
    {
        const string text =
            "36 35 98:0 /mnt1 /mnt/parent\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n" +
            "61 36 0:52 / /var/lib/nbd-csi/fuse/abc rw,nosuid,nodev,relatime - fuse.nbd-sidecar nbd-sidecar rw,user_id=0,group_id=0\n" +
            "62 36 7:3 / /staging ro,relatime shared:5 master:2 - ext4 /dev/loop3 ro\n" +
            "garbage line\n";

        var mounts = Mounts.Parse(text);

        Assert.Equal(3, mounts.Count);
        Assert.Equal(new MountInfo(36, 35, "98:0", "/mnt1", "/mnt/parent dir", "rw,noatime", "ext3", "/dev/root"), mounts[0]);
        Assert.Equal("fuse.nbd-sidecar", mounts[1].FileSystemType);
        Assert.False(mounts[1].IsReadOnly);
        Assert.Equal("/dev/loop3", mounts[2].Source);
        Assert.True(mounts[2].IsReadOnly);
    }

    [Fact]
    public void Parse_ThisProcess_FindsTheRoot()
    {
        Assert.Contains(Mounts.Read(), m => m.MountPoint == "/");
        Assert.True(Mounts.IsMountPoint("/"));
        Assert.False(Mounts.IsMountPoint("/definitely/not/mounted/here"));
    }
}
