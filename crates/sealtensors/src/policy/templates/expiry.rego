# sealtensors licence template "expiry": the model opens until a date.
# Filled by `sealtensors policy new --template expiry --not-after DATE`.
package sealtensors

import rego.v1

not_after := {{not_after}}

not_after_unix := {{not_after_unix}}

default allow := false

allow if count(deny_reasons) == 0

deny_reasons contains reason if {
	input.time.unix >= not_after_unix
	reason := concat("", ["the licence expired at ", not_after])
}
