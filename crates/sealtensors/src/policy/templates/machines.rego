# sealtensors licence template "machines": the model opens only on the
# machines listed (their /etc/machine-id).
# Filled by `sealtensors policy new --template machines --machine ID...`.
package sealtensors

import rego.v1

allowed_machines := {{machines}}

default allow := false

allow if count(deny_reasons) == 0

deny_reasons contains reason if {
	not is_string(input.host.machine_id)
	reason := "this machine has no machine id (/etc/machine-id), and the licence names the machines allowed"
}

deny_reasons contains reason if {
	id := input.host.machine_id
	is_string(id)
	not id in allowed_machines
	reason := concat("", ["this machine (machine id ", id, ") is not among the machines the licence allows"])
}
