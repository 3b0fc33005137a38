# The service's authorization policy, asked by every worker (app/policy.py) when SOMA_OPA_URL is set.
#
# data.somastack.allow: may this API request go ahead?
#   input.request  {method, path, headers}  (headers without Authorization and Cookie)
#   input.payload  the JSON body of a POST, else null
#   input.claims   the caller's verified token claims (tenant, sub, iss, scope, ...)
# data.somastack.tool_allow: may this tool run for this session?
#   input.tool {name, args}, input.session_id, input.claims (the claims the request carried)
#
# Anything the rules do not allow is denied; so is a caller without a tenant.
package somastack

import rego.v1

default allow := false

default tool_allow := false

scopes contains s if {
	some s in split(input.claims.scope, " ")
	s != ""
}

scopes contains s if {
	some s in input.claims.scp
}

has_tenant if {
	is_string(input.claims.tenant)
	input.claims.tenant != ""
}

reads := {"GET", "HEAD"}

# reading the caller's own sessions (tenant isolation is the service's own check, before this one)
allow if {
	has_tenant
	input.request.method in reads
	startswith(input.request.path, "/v1/session/")
}

# posting messages and quick actions, and asking for stream tickets, needs the "chat" scope
allow if {
	has_tenant
	input.request.method == "POST"
	input.request.path in {"/v1/session/message", "/v1/session/action", "/v1/stream-tickets"}
	"chat" in scopes
}

# a worker's internals are for operators
allow if {
	has_tenant
	input.request.path == "/v1/worker"
	"admin" in scopes
}

# tools anyone may run
harmless := {"echo", "timestamp"}

tool_allow if {
	input.tool.name in harmless
}

# reaching the network needs its own scope
tool_allow if {
	input.tool.name == "http_fetch"
	"tools:http" in scopes
}
