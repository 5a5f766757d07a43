{{- define "distillery.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "distillery.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "distillery.selectorLabels" -}}
app.kubernetes.io/name: {{ include "distillery.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "distillery.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "distillery.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: distillery
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "distillery.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "distillery.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "distillery.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
What the operator does inside the namespaces it handles, and nothing more: kopf lists and
watches Distillations and the labelled children; the reconciler creates children (and gets one whose
name is taken, to see who owns it), server-side applies the ones that may change (Deployments,
Services, the pipeline ConfigMap), deletes the teacher when labeling is done, patches Jobs (suspend),
writes Distillation status and posts Events.
*/}}
{{- define "distillery.namespacedRules" -}}
- apiGroups: [distillery.dev]
  resources: [distillations]
  verbs: [list, watch]
- apiGroups: [distillery.dev]
  resources: [distillations/status]
  verbs: [patch]
# Children carry blockOwnerDeletion; with the OwnerReferencesPermissionEnforcement admission
# plugin (OpenShift and hardened clusters) that needs update on the owner's finalizers.
- apiGroups: [distillery.dev]
  resources: [distillations/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [persistentvolumeclaims, serviceaccounts]
  verbs: [list, watch, create, get]
# The stage pods' Role grants get/patch on their progress ConfigMap: the API server lets the operator
# create that Role only because it holds those verbs itself (it also applies the pipeline ConfigMap).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [list, watch, create, get, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch, create, get, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# list: why a stage pod stays in ContainerCreating (FailedMount, FailedAttachVolume) is only in its Events.
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, get, patch, delete]
# delete: a Distillation suspended while Kueue manages its Jobs gives their quota back by deleting them; a
# training group that lost a pod restarts as a new Job.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, get, patch, delete]
# Kueue's reason for holding a queued Job back (its Workload's conditions); harmless without Kueue.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, watch]
# The stage pods' own identity (one ServiceAccount, Role and RoleBinding per Distillation).
# Without escalate/bind the API server refuses any Role granting more than the rules above.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [list, watch, create, get]
{{- end }}

{{/*
Cluster-scoped reads: nodes for GPU capacity per region; CRDs because kopf rescans resources when
they change. With watchNamespaces kopf also follows namespaces (creation and deletion).
*/}}
{{- define "distillery.clusterRules" -}}
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end }}
