namespace Nbd.Tests.Storage;

/// <summary>A scratch directory under the system temp folder, deleted with everything in it.</summary>
public sealed class TempDirectory : IDisposable
{
    public TempDirectory()
    {
        Path = Directory.CreateTempSubdirectory("nbd-tests-").FullName;
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>Creates a sparse file of <paramref name="size"/> bytes with nothing allocated.</summary>
    public string SparseFile(string name, long size)
    {
        var path = File(name);
        using var stream = new FileStream(path, FileMode.CreateNew);
        stream.SetLength(size);
        return path;
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // Best effort: a leftover temp folder must not fail a test.
        }
    }
}
