namespace Nbd.Protocol;

/// <summary>What was agreed for one connection in transmission: everything a request is judged against.</summary>
/// <param name="ExportSize">Size of the export in bytes.</param>
/// <param name="Flags">Transmission flags the server advertised.</param>
/// <param name="Style">Header style negotiated.</param>
/// <param name="BlockSizes">Block size constraints advertised (or the server defaults).</param>
/// <param name="MetaContextCount">Metadata contexts selected by NBD_OPT_SET_META_CONTEXT.</param>
public readonly record struct TransmissionContext(
    ulong ExportSize,
    TransmissionFlags Flags,
    HeaderStyle Style,
    BlockSizeConstraints BlockSizes,
    int MetaContextCount);

/// <summary>
/// The server's judgement of a request header, per the spec's error rules: unknown commands and flags that
/// were not advertised or do not apply get EINVAL; writes to a read-only export get EPERM; writes past the end
/// get ENOSPC, other requests past the end EINVAL; offsets that wrap past 2^64 get EINVAL; misaligned or
/// oversized requests get EINVAL. Pure, so each rule has a unit test.
/// </summary>
public static class RequestRules
{
    /// <summary>Returns <see cref="NbdError.None"/> when the request may be executed, else the error to reply with.</summary>
    public static NbdError Validate(in NbdRequest request, in TransmissionContext context)
    {
        var flagsError = ValidateFlags(request, context);
        if (flagsError != NbdError.None)
        {
            return flagsError;
        }

        var flags = context.Flags;
        var readOnly = (flags & TransmissionFlags.ReadOnly) != 0;
        switch (request.Command)
        {
            case NbdCommand.Read:
            case NbdCommand.Cache:
                return CheckRange(request, context, NbdError.Invalid, limitToMaximum: true);

            case NbdCommand.Write:
                if (context.Style == HeaderStyle.Extended && (request.Flags & CommandFlags.PayloadLength) == 0)
                {
                    return NbdError.Invalid;
                }

                return readOnly ? NbdError.Perm : CheckRange(request, context, NbdError.NoSpace, limitToMaximum: true);

            case NbdCommand.Flush:
                if ((flags & TransmissionFlags.SendFlush) == 0 || request.Offset != 0 || request.Length != 0)
                {
                    return NbdError.Invalid;
                }

                return NbdError.None;

            case NbdCommand.Trim:
                if ((flags & TransmissionFlags.SendTrim) == 0)
                {
                    return NbdError.Invalid;
                }

                return readOnly ? NbdError.Perm : CheckRange(request, context, NbdError.Invalid, limitToMaximum: false);

            case NbdCommand.WriteZeroes:
                if ((flags & TransmissionFlags.SendWriteZeroes) == 0)
                {
                    return NbdError.Invalid;
                }

                return readOnly ? NbdError.Perm : CheckRange(request, context, NbdError.NoSpace, limitToMaximum: false);

            case NbdCommand.BlockStatus:
                if (context.Style == HeaderStyle.Simple || context.MetaContextCount == 0 || request.Length == 0)
                {
                    return NbdError.Invalid;
                }

                return CheckRange(request, context, NbdError.Invalid, limitToMaximum: false, checkLengthAlignment: false);

            case NbdCommand.Disconnect:
                return NbdError.None;

            default:
                return NbdError.Invalid;
        }
    }

    /// <summary>Flags valid for a command, given what was advertised and negotiated.</summary>
    public static CommandFlags AllowedFlags(NbdCommand command, in TransmissionContext context)
    {
        var flags = context.Flags;
        var allowed = CommandFlags.None;

        // FUA is valid on every command once advertised (a server may ignore it where nothing is written).
        if ((flags & TransmissionFlags.SendFua) != 0)
        {
            allowed |= CommandFlags.Fua;
        }

        switch (command)
        {
            case NbdCommand.Read when (flags & TransmissionFlags.SendDf) != 0 && context.Style != HeaderStyle.Simple:
                allowed |= CommandFlags.DontFragment;
                break;
            case NbdCommand.Write when context.Style == HeaderStyle.Extended:
                allowed |= CommandFlags.PayloadLength;
                break;
            case NbdCommand.WriteZeroes:
                allowed |= CommandFlags.NoHole;
                if ((flags & TransmissionFlags.SendFastZero) != 0)
                {
                    allowed |= CommandFlags.FastZero;
                }

                break;
            case NbdCommand.BlockStatus:
                allowed |= CommandFlags.RequestOne;
                if (context.Style == HeaderStyle.Extended && (flags & TransmissionFlags.BlockStatusPayload) != 0)
                {
                    allowed |= CommandFlags.PayloadLength;
                }

                break;
        }

        return allowed;
    }

    private static NbdError ValidateFlags(in NbdRequest request, in TransmissionContext context)
    {
        var unexpected = request.Flags & ~AllowedFlags(request.Command, context);
        return unexpected == CommandFlags.None ? NbdError.None : NbdError.Invalid;
    }

    private static NbdError CheckRange(
        in NbdRequest request,
        in TransmissionContext context,
        NbdError pastEnd,
        bool limitToMaximum,
        bool checkLengthAlignment = true)
    {
        var offset = request.Offset;
        var length = request.Length;
        if (offset > ulong.MaxValue - length)
        {
            return NbdError.Invalid;
        }

        var sizes = context.BlockSizes;
        var minimum = Math.Max(1u, sizes.Minimum);
        if (offset % minimum != 0 || (checkLengthAlignment && length % minimum != 0))
        {
            return NbdError.Invalid;
        }

        if (limitToMaximum && length > sizes.Maximum)
        {
            return NbdError.Invalid;
        }

        if (offset + length > context.ExportSize || (request.Command == NbdCommand.BlockStatus && offset >= context.ExportSize))
        {
            return pastEnd;
        }

        return NbdError.None;
    }
}
