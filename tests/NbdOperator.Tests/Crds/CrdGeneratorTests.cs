using k8s;
using k8s.Models;
using NbdOperator.Api;
using NbdOperator.Crds;

namespace NbdOperator.Tests.Crds;

public class CrdGeneratorTests
{
    private static V1CustomResourceDefinition Load(Type type) =>
        KubernetesYaml.Deserialize<V1CustomResourceDefinition>(CrdGenerator.ToYaml(type));

    private static string RepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "NbdOperator.sln")))
        {
            dir = dir.Parent;
        }

        return dir?.FullName ?? throw new InvalidOperationException("repository root not found");
    }

    [Theory]
    [InlineData(typeof(NbdExport))]
    [InlineData(typeof(NbdImport))]
    public void ToYaml_MatchesTheCommittedCrd(Type type)
    {
        var committed = File.ReadAllText(Path.Combine(RepoRoot(), "crds", CrdGenerator.FileName(type)));

        Assert.True(committed == CrdGenerator.ToYaml(type), $"crds/{CrdGenerator.FileName(type)} is stale: run `make manifests`");
    }

    [Fact]
    public void NbdExport_HasNamesScopeStatusSubresourceAndPrinterColumns()
    {
        var crd = Load(typeof(NbdExport));

        Assert.Equal("nbdexports.nbdoperator.io", crd.Metadata.Name);
        Assert.Equal(("nbdoperator.io", "Namespaced", "NbdExport", "nbdexports"), (crd.Spec.Group, crd.Spec.Scope, crd.Spec.Names.Kind, crd.Spec.Names.Plural));
        Assert.Equal(["nbdexp", "nbde"], crd.Spec.Names.ShortNames);
        var version = Assert.Single(crd.Spec.Versions);
        Assert.Equal(("v1alpha1", true, true), (version.Name, version.Served, version.Storage));
        Assert.NotNull(version.Subresources.Status);
        Assert.Equal(["Phase", "Endpoint", "Size", "Reason", "Volume", "Age"], version.AdditionalPrinterColumns.Select(c => c.Name));
    }

    [Fact]
    public void NbdImport_HasProgressColumn()
    {
        var version = Load(typeof(NbdImport)).Spec.Versions[0];

        Assert.Contains(version.AdditionalPrinterColumns, c => c.Name == "Progress" && c.JsonPath == ".status.progress");
        Assert.NotNull(version.Subresources.Status);
    }

    [Fact]
    public void NbdExportSchema_CarriesDefaultsEnumsPatternsAndBounds()
    {
        var spec = Load(typeof(NbdExport)).Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"];

        Assert.Equal(["source"], spec.Required);
        Assert.Equal("10809", spec.Properties["port"].DefaultProperty.ToString());
        Assert.Equal((1.0, 65535.0), (spec.Properties["port"].Minimum, spec.Properties["port"].Maximum));
        Assert.Equal("true", spec.Properties["readOnly"].DefaultProperty.ToString()!.ToLowerInvariant());
        Assert.Equal(["ClusterIP", "NodePort", "LoadBalancer"], spec.Properties["service"].Properties["type"].EnumProperty.Select(e => e.ToString()));
        Assert.Equal(NbdApi.DurationPattern, spec.Properties["ttl"].Pattern);
        Assert.Equal(["claimName"], spec.Properties["source"].Properties["persistentVolumeClaim"].Required);
        Assert.True(spec.Properties["podTemplate"].Properties["resources"].Properties["requests"].AdditionalProperties is not null);
    }

    [Fact]
    public void Schemas_DescribeEveryFieldOfOurOwnTypes()
    {
        foreach (var type in CrdGenerator.ResourceTypes)
        {
            var root = Load(type).Spec.Versions[0].Schema.OpenAPIV3Schema;
            var missing = new List<string>();
            Walk(root.Properties["spec"], "spec", missing);
            Walk(root.Properties["status"], "status", missing);
            Assert.True(missing.Count == 0, $"{type.Name}: fields without a description: {string.Join(", ", missing)}");
        }

        static void Walk(V1JSONSchemaProps schema, string path, List<string> missing)
        {
            foreach (var (name, child) in schema.Properties ?? new Dictionary<string, V1JSONSchemaProps>())
            {
                // Fields of Kubernetes' own types (tolerations, resources, conditions) keep their upstream shape.
                if (path.Contains("tolerations", StringComparison.Ordinal) || path.Contains("resources", StringComparison.Ordinal) ||
                    path.Contains("conditions", StringComparison.Ordinal))
                {
                    continue;
                }

                if (string.IsNullOrEmpty(child.Description))
                {
                    missing.Add($"{path}.{name}");
                }

                Walk(child, $"{path}.{name}", missing);
                if (child.Items is V1JSONSchemaProps items)
                {
                    Walk(items, $"{path}.{name}[]", missing);
                }
            }
        }
    }

    [Fact]
    public void Schemas_UseNoCelAndConditionsAreAListMap()
    {
        foreach (var type in CrdGenerator.ResourceTypes)
        {
            var yaml = CrdGenerator.ToYaml(type);
            Assert.DoesNotContain("x-kubernetes-validations", yaml, StringComparison.Ordinal);
            Assert.DoesNotContain("oneOf", yaml, StringComparison.Ordinal);
            var conditions = Load(type).Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["status"].Properties["conditions"];
            Assert.Equal("map", conditions.XKubernetesListType);
            Assert.Equal(["type"], conditions.XKubernetesListMapKeys);
        }
    }

    [Fact]
    public void WriteAll_WritesOneFilePerResource()
    {
        var dir = Directory.CreateTempSubdirectory("crds-");
        try
        {
            var files = CrdGenerator.WriteAll(dir.FullName);

            Assert.Equal(["nbdoperator.io_nbdexports.yaml", "nbdoperator.io_nbdimports.yaml"], files.Select(Path.GetFileName));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void Samples_AreValidResourcesOfOurKinds()
    {
        var samples = Directory.GetFiles(Path.Combine(RepoRoot(), "crds", "samples"), "*.yaml");
        Assert.NotEmpty(samples);
        var kinds = new Dictionary<string, Type>
        {
            ["nbdoperator.io/v1alpha1/NbdExport"] = typeof(NbdExport),
            ["nbdoperator.io/v1alpha1/NbdImport"] = typeof(NbdImport),
            ["v1/PersistentVolumeClaim"] = typeof(V1PersistentVolumeClaim),
            ["v1/Secret"] = typeof(V1Secret),
            ["snapshot.storage.k8s.io/v1/VolumeSnapshot"] = typeof(Dictionary<string, object>),
        };
        foreach (var sample in samples)
        {
            var objects = KubernetesYaml.LoadAllFromString(File.ReadAllText(sample), kinds);
            foreach (var export in objects.OfType<NbdExport>())
            {
                Assert.Empty(Controllers.Export.ExportSpecValidator.Validate(export.Spec));
            }

            Assert.NotEmpty(objects);
        }
    }
}

public class OperatorOptionsTests
{
    [Fact]
    public void Parse_Defaults()
    {
        var o = OperatorOptions.Parse([]);

        Assert.Equal((null, false, ":8080", ":8081", 2), (o.Namespace, o.LeaderElect, o.MetricsBindAddress, o.HealthProbeBindAddress, o.Workers));
    }

    [Fact]
    public void Parse_AllFlags_BothSpellings()
    {
        var o = OperatorOptions.Parse([
            "--kubeconfig", "/k", "--namespace=vms", "--leader-elect", "--sidecar-image", "img:1",
            "--metrics-bind-address=127.0.0.1:0", "--health-probe-bind-address", "0", "--workers", "4",
            "--leader-election-namespace", "ops", "--log-level=debug",
        ]);

        Assert.Equal(("/k", "vms", true, "img:1", "127.0.0.1:0", "0", 4, "ops", "debug"),
            (o.Kubeconfig, o.Namespace, o.LeaderElect, o.SidecarImage, o.MetricsBindAddress, o.HealthProbeBindAddress, o.Workers,
                o.LeaderElectionNamespace, o.LogLevel));
        Assert.False(OperatorOptions.Parse(["--leader-elect=false"]).LeaderElect);
    }

    [Theory]
    [InlineData("--bogus")]
    [InlineData("--namespace")]
    [InlineData("--workers=0")]
    [InlineData("--leader-elect=maybe")]
    [InlineData("--log-level=loud")]
    public void Parse_Bad_Throws(string arg)
    {
        Assert.Throws<ArgumentException>(() => OperatorOptions.Parse([arg]));
    }
}
