{{- /*
The operator's permissions: one rule per line, each verb one the operator really uses.

ChartTests.Rbac_ChartIdentity_RunsEveryFlowAndIsMinimal runs every operator flow with the chart's
ServiceAccount and compares these rules with the requests the apiserver audited: a request that was
forbidden means a rule is missing; a granted verb no request used means a rule is too wide. Adding a
permission is adding (or extending) one line here, together with the flow that needs it.
*/ -}}

{{- /* In the watched namespaces (a ClusterRole, bound cluster-wide or by RoleBinding per namespace). */ -}}
{{- define "nbd-operator.rbac.managerRules" -}}
- {apiGroups: [nbdoperator.io], resources: [nbdexports], verbs: [get, list, watch, patch, delete]}
- {apiGroups: [nbdoperator.io], resources: [nbdexports/status], verbs: [update]}
- {apiGroups: [nbdoperator.io], resources: [nbdimports], verbs: [list, watch]}
- {apiGroups: [nbdoperator.io], resources: [nbdimports/status], verbs: [update]}
- {apiGroups: [""], resources: [pods], verbs: [list, watch, create, delete]}
- {apiGroups: [""], resources: [services], verbs: [list, watch, create, delete]}
- {apiGroups: [""], resources: [persistentvolumeclaims], verbs: [get, list, watch, create, delete, patch]}
- {apiGroups: [""], resources: [secrets], verbs: [get]}
- {apiGroups: [""], resources: [events], verbs: [create, patch]}
- {apiGroups: [snapshot.storage.k8s.io], resources: [volumesnapshots], verbs: [get]}
{{- end }}

{{- /* Cluster-scoped objects (always a ClusterRole with a ClusterRoleBinding): the CSI PersistentVolumes of
exports with spec.persistentVolume. */ -}}
{{- define "nbd-operator.rbac.clusterRules" -}}
- {apiGroups: [""], resources: [persistentvolumes], verbs: [get, list, watch, create, delete]}
{{- end }}

{{- /* In the operator's own namespace, where its leader-election Lease lives. */ -}}
{{- define "nbd-operator.rbac.leaderElectionRules" -}}
- {apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, create, update]}
{{- end }}
