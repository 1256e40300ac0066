# sealtensors licence template "frameworks": the model opens only inside the
# frameworks listed (torch, numpy, transformers, vllm, ...).
# Filled by `sealtensors policy new --template frameworks --framework NAME...`.
package sealtensors

import rego.v1

allowed_frameworks := {{frameworks}}

default allow := false

allow if count(deny_reasons) == 0

deny_reasons contains reason if {
	not is_string(input.process.framework)
	reason := concat("", ["no framework was named by the loader; the licence allows only: ", concat(", ", allowed_frameworks)])
}

deny_reasons contains reason if {
	name := input.process.framework
	is_string(name)
	not name in allowed_frameworks
	reason := concat("", ["the framework ", name, " is not allowed by the licence; allowed: ", concat(", ", allowed_frameworks)])
}
