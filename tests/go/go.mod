module github.com/volcengine-ecs-operator/tests/go

go 1.22

require github.com/volcengine/volcengine-go-sdk v1.1.35

require (
	github.com/google/uuid v1.3.0 // indirect
	github.com/jmespath/go-jmespath v0.4.0 // indirect
	github.com/volcengine/volc-sdk-golang v1.0.23 // indirect
	gopkg.in/yaml.v2 v2.2.8 // indirect
)
