// Package packet parses packet headers for the flowswitch and builds the flow
// keys it looks packets up by (docs/design.md §4).
//
// [Parse] reads an Ethernet (one optional 802.1Q tag) or raw IP frame: IPv4
// with options and fragments, IPv6 with its extension headers, and TCP, UDP,
// ICMP or ICMPv6 on top. It fills a caller-owned [Parsed] with offsets and
// header fields, and [Parsed.RxKey] / [Parsed.TxKey] turn that into a [Key]
// oriented to the local side.
//
// Invariants, each checked by the tests and the fuzz targets:
//
//   - Parse never panics, whatever the input: every read is bounds-checked
//     against the buffer and against the lengths the headers claim.
//   - Parse, RxKey, TxKey and Key.Hash never allocate.
//   - Parse never retains the buffer: Parsed holds offsets and copied
//     values only, so the buffer may be reused as soon as Parse returns.
//   - Every rejection is a named [Reason], so a stats table can keep one
//     counter per reason, indexed by the Reason value.
//   - A [Template] matches a packet only if Parse accepts it with the
//     template's keys (FuzzTemplate): the transmit fast path relies on it.
//   - For packets it accepts, Parse agrees with gopacket's decoder on
//     addresses, protocol, ports and TCP sequence numbers and flags (the
//     documented exceptions are listed in fuzz_test.go).
//
// Checksums are not verified: on receive the device usually has checked them
// (and a virtual device may hand over packets whose checksum is not filled
// in yet, with CHECKSUM_PARTIAL semantics), and the user-space stack that
// owns the flow verifies what is left; on transmit the device or the nexus
// computes them. Verifying here would touch every payload byte a second time.
//
// Parse checks what the flowswitch relies on — header lengths, the lengths
// the IP and UDP headers claim, the extension-header chain, the fragment
// range — and nothing else: IPv4 options, IPv6 options TLVs and TCP options
// are skipped over, not validated, and ICMP error messages are not looked
// into by Parse ([Parsed.QuotedKey] reads the flow an error quotes).
package packet
