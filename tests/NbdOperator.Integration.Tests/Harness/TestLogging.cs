using Microsoft.Extensions.Logging;

namespace NbdOperator.Integration.Tests.Harness;

/// <summary>Sends operator and runner logs to the current test's output (shown when it fails).</summary>
public sealed class TestOutputLoggerProvider(ITestOutputHelper? output, string prefix = "") : ILoggerProvider
{
    public ILogger CreateLogger(string categoryName) => new Logger(output, prefix + categoryName);

    public void Dispose()
    {
    }

    public static ILoggerFactory Factory(string prefix = "") => LoggerFactory.Create(b => b
        .AddProvider(new TestOutputLoggerProvider(TestContext.Current.TestOutputHelper, prefix))
        .SetMinimumLevel(LogLevel.Information));

    private sealed class Logger(ITestOutputHelper? output, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state)
            where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => output is not null;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            try
            {
                output?.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} {logLevel.ToString()[..4]} {category}: {formatter(state, exception)}" +
                                  (exception is null ? "" : $" {exception}"));
            }
            catch (InvalidOperationException)
            {
                // The test has finished; its output is closed.
            }
        }
    }
}
