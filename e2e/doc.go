// Package e2e holds Skylane's privileged end-to-end tests: a
// user-space stack (client.Stack on a nexus) on each kernel-facing driver
// (AF_XDP, AF_PACKET with steering, TUN), against the real kernel stack of
// a peer network namespace, with the kernel's own tools (curl, tshark) as
// the other side, and `skylane serve` run as a binary. Hostile traffic
// comes from real tools too: hping3 floods, nmap scans, and malformed
// frames from scapy (testdata/malformed.py).
//
// Every test needs root and skips without it, except under
// SKYLANE_REQUIRE_PRIV=1, where a skip is a failure (nettest.RequirePriv).
// Each makes its own namespaces, veth pair or TUN device, and removes them
// on every path; every external command and every wait is bounded in time;
// addresses are in 198.18.0.0/15 and 2001:2::/48 (RFC 2544, RFC 5180).
//
// The package has no code outside its tests.
package e2e
