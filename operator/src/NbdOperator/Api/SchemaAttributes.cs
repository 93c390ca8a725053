namespace NbdOperator.Api;

// Attributes the CRD generator reads from the API types. They carry only what OpenAPI v3 in a
// structural schema can express on a 1.20 apiserver (no CEL): descriptions come from
// System.ComponentModel.DescriptionAttribute, the rest from these.

/// <summary>The property must be present (OpenAPI <c>required</c> on the parent object).</summary>
[AttributeUsage(AttributeTargets.Property)]
public sealed class RequiredAttribute : Attribute;

/// <summary>The value must be one of these strings (OpenAPI <c>enum</c>).</summary>
[AttributeUsage(AttributeTargets.Property)]
public sealed class EnumAttribute(params string[] values) : Attribute
{
    public IReadOnlyList<string> Values { get; } = values;
}

/// <summary>The string must match this ECMA-262 regular expression (OpenAPI <c>pattern</c>).</summary>
[AttributeUsage(AttributeTargets.Property)]
public sealed class PatternAttribute(string pattern) : Attribute
{
    public string Pattern { get; } = pattern;
}

/// <summary>Inclusive numeric bounds (OpenAPI <c>minimum</c> / <c>maximum</c>).</summary>
[AttributeUsage(AttributeTargets.Property)]
public sealed class RangeAttribute(long minimum, long maximum) : Attribute
{
    public long Minimum { get; } = minimum;
    public long Maximum { get; } = maximum;
}

/// <summary>String length bounds (OpenAPI <c>minLength</c> / <c>maxLength</c>).</summary>
[AttributeUsage(AttributeTargets.Property)]
public sealed class LengthAttribute(int minimum, int maximum) : Attribute
{
    public int Minimum { get; } = minimum;
    public int Maximum { get; } = maximum;
}

/// <summary>The apiserver fills this value in when the field is absent (OpenAPI <c>default</c>).</summary>
[AttributeUsage(AttributeTargets.Property)]
public sealed class DefaultAttribute(object value) : Attribute
{
    public object Value { get; } = value;
}

/// <summary>A printer column for <c>kubectl get</c>.</summary>
[AttributeUsage(AttributeTargets.Class, AllowMultiple = true)]
public sealed class PrinterColumnAttribute(string name, string type, string jsonPath) : Attribute
{
    public string Name { get; } = name;
    public string Type { get; } = type;
    public string JsonPath { get; } = jsonPath;
    public string? Description { get; init; }
    public int Priority { get; init; }
}

/// <summary>Names and scope of a custom resource; read by the CRD generator.</summary>
[AttributeUsage(AttributeTargets.Class)]
public sealed class CustomResourceAttribute(string kind, string plural) : Attribute
{
    public string Kind { get; } = kind;
    public string Plural { get; } = plural;
    public string[] ShortNames { get; init; } = [];
    public string[] Categories { get; init; } = [];
}
