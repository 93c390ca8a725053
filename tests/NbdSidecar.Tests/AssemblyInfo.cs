// The node plugin and its tests are Linux-only (mounts, loop devices, FUSE, netlink).
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]
