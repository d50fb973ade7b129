// Package policy says which app may do what on a nexus (docs/design.md §1,
// §3): the operator's policy file, matched against the peer credentials
// (uid, gid, supplementary groups) the kernel reports for each app's control
// session.
//
// The file is TOML, a list of [[allow]] rules:
//
//	[[allow]]
//	uid = 65534              # or gid = N, user = "name", group = "name"
//	tcp = ["8080", "9000-9099"]
//	udp = ["5353"]
//	addrs = ["198.18.0.1"]   # optional; default every address of the interface
//	max_flows = 10000        # optional limits; absent means no limit
//	max_pool = "64MiB"
//	rate = "1Gbit"
//	dial = true              # may open outgoing connections
//	dial_to = ["198.18.0.0/15"]  # optional: only to these prefixes
//	observe = false          # may read the nexus's stats
//
// Matching: the FIRST rule, in file order, whose selector matches the app's
// credentials governs the whole session: its ports, addresses, limits and
// permissions, nothing merged from later rules. Put specific rules (a uid)
// before general ones (a group), as in a firewall. A refusal names the
// governing rule and, if another rule would allow the request, that rule,
// so the operator sees which rule to move or widen.
//
// Invariants:
//
//   - Parsing is strict: an unknown key, a rule with no selector or with
//     two, a bad port range, size, rate, address or prefix is an error that
//     names the rule and its line. Users and groups are resolved when the
//     file is loaded: a name that does not exist is an error.
//   - uid 0 may do everything, policy file or not; with no policy file
//     (RootOnly) only uid 0 may attach.
//   - Every refusal is an error for which errors.Is(err, ErrNotPermitted)
//     holds; checks never panic, whatever the request.
//   - A Policy is immutable once parsed: a reload makes a new one, and a
//     Grant keeps the rule it was made from (see Grant).
package policy
