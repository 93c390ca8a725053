namespace NbdSidecar.Cli;

/// <summary>Process exit codes shared by every subcommand; scripts and the operator rely on them.</summary>
public static class ExitCodes
{
    public const int Success = 0;

    /// <summary>A runtime failure that fits no narrower code.</summary>
    public const int Failure = 1;

    /// <summary>The command line was wrong; nothing was done.</summary>
    public const int Usage = 2;

    /// <summary>Reading the source failed (after retries).</summary>
    public const int SourceError = 3;

    /// <summary>Writing the destination failed (after retries), or it is too small.</summary>
    public const int DestinationError = 4;

    /// <summary>The copy finished but source and destination digests differ.</summary>
    public const int VerifyFailed = 5;

    /// <summary>The checkpoint belongs to another copy, is damaged, or cannot be written; delete it to start over.</summary>
    public const int CheckpointError = 6;

    /// <summary>Stopped by SIGINT or SIGTERM before finishing (a checkpoint allows resuming).</summary>
    public const int Interrupted = 130;
}
