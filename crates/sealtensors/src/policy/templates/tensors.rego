# sealtensors licence template "tensors": only the tensors matching the
# patterns listed may be requested (globs: * matches any text, dots too).
# Filled by `sealtensors policy new --template tensors --tensor GLOB...`.
package sealtensors

import rego.v1

allowed_tensors := {{tensors}}

default allow := false

allow if count(deny_reasons) == 0

permitted(name) if {
	some pattern in allowed_tensors
	glob.match(pattern, null, name)
}

deny_reasons contains reason if {
	some name in input.request.tensors
	not permitted(name)
	reason := concat("", ["tensor ", name, " is not among the tensors the licence allows"])
}
