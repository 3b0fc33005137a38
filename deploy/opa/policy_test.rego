package somastack_test

import rego.v1

import data.somastack

claims(scope) := {"tenant": "acme", "sub": "alice", "scope": scope}

request(method, path) := {"method": method, "path": path, "headers": {}}

test_reading_a_session_is_allowed if {
	somastack.allow with input as {"request": request("GET", "/v1/session/s1"), "claims": claims("")}
}

test_no_tenant_is_denied if {
	not somastack.allow with input as {"request": request("GET", "/v1/session/s1"), "claims": {"sub": "x"}}
}

test_posting_needs_the_chat_scope if {
	somastack.allow with input as {"request": request("POST", "/v1/session/message"), "claims": claims("chat")}
	not somastack.allow with input as {"request": request("POST", "/v1/session/message"), "claims": claims("read")}
}

test_scp_lists_count_as_scopes if {
	somastack.allow with input as {
		"request": request("POST", "/v1/session/message"),
		"claims": {"tenant": "acme", "scp": ["chat"]},
	}
}

test_worker_info_needs_admin if {
	somastack.allow with input as {"request": request("GET", "/v1/worker"), "claims": claims("admin")}
	not somastack.allow with input as {"request": request("GET", "/v1/worker"), "claims": claims("chat")}
}

test_unknown_paths_are_denied if {
	not somastack.allow with input as {"request": request("DELETE", "/v1/session/s1"), "claims": claims("chat admin")}
}

test_harmless_tools_run if {
	somastack.tool_allow with input as {"tool": {"name": "echo", "args": {}}, "claims": claims("")}
}

test_http_fetch_needs_its_scope if {
	somastack.tool_allow with input as {"tool": {"name": "http_fetch", "args": {}}, "claims": claims("chat tools:http")}
	not somastack.tool_allow with input as {"tool": {"name": "http_fetch", "args": {}}, "claims": claims("chat")}
}

test_unknown_tools_are_denied if {
	not somastack.tool_allow with input as {"tool": {"name": "rm_rf", "args": {}}, "claims": claims("admin")}
}
