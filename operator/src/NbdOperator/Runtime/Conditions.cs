using k8s.Models;

namespace NbdOperator.Runtime;

/// <summary>
/// metav1.Condition semantics on a list keyed by type: <c>lastTransitionTime</c> changes only when the
/// status flips; reason, message and <c>observedGeneration</c> follow every update.
/// </summary>
public static class Conditions
{
    public const string True = "True";
    public const string False = "False";
    public const string Unknown = "Unknown";

    public static V1Condition? Find(IEnumerable<V1Condition>? conditions, string type) =>
        conditions?.FirstOrDefault(c => c.Type == type);

    public static bool IsTrue(IEnumerable<V1Condition>? conditions, string type) => Find(conditions, type)?.Status == True;

    /// <summary>
    /// Sets condition <paramref name="type"/> in <paramref name="conditions"/>; returns true when anything changed.
    /// Times are kept to whole seconds, as the apiserver stores them, so that a round trip compares equal.
    /// </summary>
    public static bool Set(IList<V1Condition> conditions, string type, string status, string reason, string message,
        long? observedGeneration, DateTime now)
    {
        ArgumentException.ThrowIfNullOrEmpty(type);
        if (status is not (True or False or Unknown))
        {
            throw new ArgumentException($"condition status must be True, False or Unknown, not '{status}'", nameof(status));
        }

        ArgumentException.ThrowIfNullOrEmpty(reason);
        var existing = Find(conditions, type);
        if (existing is null)
        {
            conditions.Add(new V1Condition
            {
                Type = type,
                Status = status,
                Reason = reason,
                Message = message,
                ObservedGeneration = observedGeneration,
                LastTransitionTime = TruncateToSeconds(now),
            });
            return true;
        }

        var changed = false;
        if (existing.Status != status)
        {
            existing.Status = status;
            existing.LastTransitionTime = TruncateToSeconds(now);
            changed = true;
        }

        if (existing.Reason != reason || existing.Message != message || existing.ObservedGeneration != observedGeneration)
        {
            existing.Reason = reason;
            existing.Message = message;
            existing.ObservedGeneration = observedGeneration;
            changed = true;
        }

        return changed;
    }

    /// <summary>Removes condition <paramref name="type"/>; returns true if it was there.</summary>
    public static bool Remove(IList<V1Condition> conditions, string type)
    {
        var existing = Find(conditions, type);
        return existing is not null && conditions.Remove(existing);
    }

    public static DateTime TruncateToSeconds(DateTime time) =>
        new(time.Ticks - (time.Ticks % TimeSpan.TicksPerSecond), DateTimeKind.Utc);
}
