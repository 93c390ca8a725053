namespace Nbd.Protocol;

/// <summary>
/// Malformed or forbidden protocol input. When <see cref="OptionReply"/> or <see cref="Error"/> is set the
/// peer can be told with that code and the session continues; otherwise the stream can no longer be trusted
/// (bad magic, impossible length) and the only safe answer is a hard disconnect.
/// </summary>
public sealed class NbdProtocolException : Exception
{
    public NbdProtocolException(string message)
        : base(message)
    {
    }

    public NbdProtocolException(OptionReplyType optionReply, string message)
        : base(message)
    {
        OptionReply = optionReply;
    }

    public NbdProtocolException(NbdError error, string message)
        : base(message)
    {
        Error = error;
    }

    public NbdProtocolException()
    {
    }

    public NbdProtocolException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>The option error to reply with, when the failure is confined to one option.</summary>
    public OptionReplyType? OptionReply { get; }

    /// <summary>The transmission error to reply with, when the failure is confined to one request.</summary>
    public NbdError? Error { get; }

    /// <summary>True when the session cannot continue and must be dropped.</summary>
    public bool IsFatal => OptionReply is null && Error is null;
}
