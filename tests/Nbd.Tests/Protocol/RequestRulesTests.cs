using Nbd.Protocol;

namespace Nbd.Tests.Protocol;

public class RequestRulesTests
{
    private const ulong Size = 1 << 20;

    private const TransmissionFlags AllFlags =
        TransmissionFlags.HasFlags | TransmissionFlags.SendFlush | TransmissionFlags.SendFua | TransmissionFlags.SendTrim
        | TransmissionFlags.SendWriteZeroes | TransmissionFlags.SendDf | TransmissionFlags.CanMultiConn
        | TransmissionFlags.SendCache | TransmissionFlags.SendFastZero;

    private static readonly TransmissionContext Writable =
        new(Size, AllFlags, HeaderStyle.Structured, BlockSizeConstraints.ServerDefault, MetaContextCount: 1);

    private static NbdError Check(NbdCommand command, ulong offset, ulong length, CommandFlags flags = CommandFlags.None, TransmissionContext? context = null) =>
        RequestRules.Validate(new NbdRequest(flags, command, 1, offset, length), context ?? Writable);

    [Theory]
    [InlineData(NbdCommand.Read)]
    [InlineData(NbdCommand.Write)]
    [InlineData(NbdCommand.Trim)]
    [InlineData(NbdCommand.WriteZeroes)]
    [InlineData(NbdCommand.Cache)]
    [InlineData(NbdCommand.BlockStatus)]
    public void Validate_InRangeRequest_Accepted(NbdCommand command) => Assert.Equal(NbdError.None, Check(command, 4096, 4096));

    [Fact]
    public void Validate_Flush_AcceptedOnlyWithZeroOffsetAndLength()
    {
        Assert.Equal(NbdError.None, Check(NbdCommand.Flush, 0, 0));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.Flush, 0, 1));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.Flush, 512, 0));
    }

    [Theory]
    [InlineData(NbdCommand.Read, NbdError.Invalid)]
    [InlineData(NbdCommand.Cache, NbdError.Invalid)]
    [InlineData(NbdCommand.Trim, NbdError.Invalid)]
    [InlineData(NbdCommand.BlockStatus, NbdError.Invalid)]
    [InlineData(NbdCommand.Write, NbdError.NoSpace)]
    [InlineData(NbdCommand.WriteZeroes, NbdError.NoSpace)]
    public void Validate_PastTheEnd_GetsSpecError(NbdCommand command, NbdError expected) =>
        Assert.Equal(expected, Check(command, Size - 512, 1024));

    [Theory]
    [InlineData(NbdCommand.Read)]
    [InlineData(NbdCommand.Write)]
    [InlineData(NbdCommand.Trim)]
    [InlineData(NbdCommand.WriteZeroes)]
    public void Validate_OffsetWrapsPast2To64_IsInvalid(NbdCommand command) =>
        Assert.Equal(NbdError.Invalid, Check(command, ulong.MaxValue - 100, 4096));

    [Theory]
    [InlineData(NbdCommand.Write)]
    [InlineData(NbdCommand.Trim)]
    [InlineData(NbdCommand.WriteZeroes)]
    public void Validate_WriteToReadOnlyExport_IsPerm(NbdCommand command)
    {
        var readOnly = Writable with { Flags = AllFlags | TransmissionFlags.ReadOnly };
        Assert.Equal(NbdError.Perm, Check(command, 0, 4096, context: readOnly));
        Assert.Equal(NbdError.None, Check(NbdCommand.Read, 0, 4096, context: readOnly));
    }

    [Theory]
    [InlineData(NbdCommand.Read, CommandFlags.NoHole)]
    [InlineData(NbdCommand.Read, CommandFlags.RequestOne)]
    [InlineData(NbdCommand.Read, CommandFlags.FastZero)]
    [InlineData(NbdCommand.Write, CommandFlags.DontFragment)]
    [InlineData(NbdCommand.Write, CommandFlags.PayloadLength)]
    [InlineData(NbdCommand.Trim, CommandFlags.NoHole)]
    [InlineData(NbdCommand.WriteZeroes, CommandFlags.RequestOne)]
    [InlineData(NbdCommand.BlockStatus, CommandFlags.DontFragment)]
    [InlineData(NbdCommand.Cache, CommandFlags.NoHole)]
    [InlineData(NbdCommand.Read, (CommandFlags)0x40)]
    [InlineData(NbdCommand.Flush, (CommandFlags)0x8000)]
    public void Validate_FlagNotValidForCommand_IsInvalid(NbdCommand command, CommandFlags flags) =>
        Assert.Equal(NbdError.Invalid, Check(command, 0, command == NbdCommand.Flush ? 0UL : 4096UL, flags));

    [Fact]
    public void Validate_ValidFlags_Accepted()
    {
        Assert.Equal(NbdError.None, Check(NbdCommand.Write, 0, 4096, CommandFlags.Fua));
        Assert.Equal(NbdError.None, Check(NbdCommand.Read, 0, 4096, CommandFlags.Fua | CommandFlags.DontFragment));
        Assert.Equal(NbdError.None, Check(NbdCommand.WriteZeroes, 0, 4096, CommandFlags.NoHole | CommandFlags.FastZero | CommandFlags.Fua));
        Assert.Equal(NbdError.None, Check(NbdCommand.BlockStatus, 0, 4096, CommandFlags.RequestOne));
        Assert.Equal(NbdError.None, Check(NbdCommand.Flush, 0, 0, CommandFlags.Fua));
    }

    [Fact]
    public void Validate_FlagsWhoseFeatureWasNotAdvertised_AreInvalid()
    {
        // nbdkit 1.32.5 aborts on FAST_ZERO it did not advertise; this server must answer EINVAL.
        var plain = Writable with { Flags = TransmissionFlags.HasFlags | TransmissionFlags.SendWriteZeroes };
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.WriteZeroes, 0, 4096, CommandFlags.FastZero, plain));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.Write, 0, 4096, CommandFlags.Fua, plain));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.Read, 0, 4096, CommandFlags.DontFragment, plain));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.Flush, 0, 0, context: plain));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.Trim, 0, 4096, context: plain));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.WriteZeroes, 0, 4096, context: Writable with { Flags = TransmissionFlags.HasFlags }));
    }

    [Fact]
    public void Validate_DontFragmentWithSimpleReplies_IsInvalid()
    {
        var simple = Writable with { Style = HeaderStyle.Simple };
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.Read, 0, 4096, CommandFlags.DontFragment, simple));
    }

    [Fact]
    public void Validate_BlockStatusWithoutContextOrStructuredReplies_IsInvalid()
    {
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.BlockStatus, 0, 4096, context: Writable with { MetaContextCount = 0 }));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.BlockStatus, 0, 4096, context: Writable with { Style = HeaderStyle.Simple }));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.BlockStatus, 0, 0));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.BlockStatus, Size, 512));
    }

    [Fact]
    public void Validate_BlockStatusLength_IsOnlyAHint()
    {
        // The length may run past the end and need not be aligned; only the offset must be inside.
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.BlockStatus, 0, Size + 1));
        var aligned = Writable with { BlockSizes = new BlockSizeConstraints(512, 4096, 1 << 25) };
        Assert.Equal(NbdError.None, Check(NbdCommand.BlockStatus, 512, 100, context: aligned));
    }

    [Fact]
    public void Validate_Alignment_FollowsMinimumBlockSize()
    {
        var aligned = Writable with { BlockSizes = new BlockSizeConstraints(512, 4096, 1 << 25) };
        Assert.Equal(NbdError.None, Check(NbdCommand.Read, 512, 1024, context: aligned));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.Read, 1, 512, context: aligned));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.Write, 512, 100, context: aligned));
        Assert.Equal(NbdError.None, Check(NbdCommand.Read, 1, 3));
    }

    [Fact]
    public void Validate_MaximumBlockSize_LimitsPayloadCommandsOnly()
    {
        var limited = Writable with { BlockSizes = new BlockSizeConstraints(1, 4096, 65536) };
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.Read, 0, 65537, context: limited));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.Write, 0, 65537, context: limited));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.Cache, 0, 65537, context: limited));
        Assert.Equal(NbdError.None, Check(NbdCommand.WriteZeroes, 0, Size, context: limited));
        Assert.Equal(NbdError.None, Check(NbdCommand.Trim, 0, Size, context: limited));
    }

    [Fact]
    public void Validate_ExtendedWrite_RequiresPayloadLenFlag()
    {
        var extended = Writable with { Style = HeaderStyle.Extended };
        Assert.Equal(NbdError.None, Check(NbdCommand.Write, 0, 4096, CommandFlags.PayloadLength, extended));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.Write, 0, 4096, CommandFlags.None, extended));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.Read, 0, 4096, CommandFlags.PayloadLength, extended));
        Assert.Equal(NbdError.Invalid, Check(NbdCommand.BlockStatus, 0, 4096, CommandFlags.PayloadLength, extended));
    }

    [Theory]
    [InlineData(8)]
    [InlineData(9)]
    [InlineData(0xFFFF)]
    public void Validate_UnknownCommand_IsInvalid(ushort command) =>
        Assert.Equal(NbdError.Invalid, Check((NbdCommand)command, 0, 0));

    [Fact]
    public void Validate_ZeroLengthReadAndWrite_AreHarmlessNoOps()
    {
        Assert.Equal(NbdError.None, Check(NbdCommand.Read, 0, 0));
        Assert.Equal(NbdError.None, Check(NbdCommand.Write, Size, 0));
    }
}
