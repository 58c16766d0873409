{{/* The name of every object, label and Lease: "ecs-operator" unless nameOverride says
otherwise (one install per cluster: the ClusterRoles are cluster-wide). */}}
{{- define "ecs-operator.name" -}}
{{- default "ecs-operator" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}
