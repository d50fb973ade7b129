package packet

import (
	"errors"
	"strconv"
)

// Reason says why [Parse] rejected a packet. It implements error, and Parse
// returns a Reason unwrapped, so callers can switch on it or use it to index
// a table of [NumReasons] counters.
//
// The zero Reason, ReasonNone, is not a rejection: Parse never returns it.
type Reason uint8

// The rejection reasons. String gives each a snake_case name for stats.
const (
	ReasonNone                 Reason = iota // not an error; never returned
	ReasonBadLinkType                        // LinkType is neither Ethernet nor RawIP
	ReasonTruncatedL2                        // shorter than the Ethernet header (with its VLAN tag)
	ReasonUnsupportedEtherType               // not IPv4, IPv6 or ARP after at most one 802.1Q tag
	ReasonTruncatedARP                       // ARP shorter than its header and addresses
	ReasonTruncatedIP                        // raw IP frame too short to hold a version
	ReasonBadIPVersion                       // version is not 4 or 6, or disagrees with the EtherType
	ReasonTruncatedIPv4                      // buffer shorter than the IPv4 header or total length
	ReasonBadIPv4IHL                         // IHL < 5
	ReasonBadIPv4TotalLength                 // total length < header length
	ReasonBadFragment                        // fragment offset + length past 65535 (ping of death)
	ReasonTruncatedIPv6                      // buffer shorter than 40 bytes or 40 + payload length
	ReasonTooManyExtHeaders                  // more than MaxExtHeaders IPv6 extension headers
	ReasonTruncatedExtHeader                 // extension header runs past the IPv6 payload
	ReasonBadExtHeader                       // hop-by-hop not first, a second fragment header, AH < 12 bytes
	ReasonTruncatedTCP                       // IP payload shorter than 20 bytes
	ReasonBadTCPDataOffset                   // data offset < 5 or past the IP payload
	ReasonTruncatedUDP                       // IP payload shorter than 8 bytes
	ReasonBadUDPLength                       // UDP length < 8 or past the IP payload
	ReasonTruncatedICMP                      // IP payload shorter than the 8-byte ICMP header
	NumReasons                               // number of Reason values, for counter tables
)

var reasonNames = [NumReasons]string{
	ReasonNone:                 "none",
	ReasonBadLinkType:          "bad_link_type",
	ReasonTruncatedL2:          "truncated_l2",
	ReasonUnsupportedEtherType: "unsupported_ethertype",
	ReasonTruncatedARP:         "truncated_arp",
	ReasonTruncatedIP:          "truncated_ip",
	ReasonBadIPVersion:         "bad_ip_version",
	ReasonTruncatedIPv4:        "truncated_ipv4",
	ReasonBadIPv4IHL:           "bad_ipv4_ihl",
	ReasonBadIPv4TotalLength:   "bad_ipv4_total_length",
	ReasonBadFragment:          "bad_fragment",
	ReasonTruncatedIPv6:        "truncated_ipv6",
	ReasonTooManyExtHeaders:    "too_many_ext_headers",
	ReasonTruncatedExtHeader:   "truncated_ext_header",
	ReasonBadExtHeader:         "bad_ext_header",
	ReasonTruncatedTCP:         "truncated_tcp",
	ReasonBadTCPDataOffset:     "bad_tcp_data_offset",
	ReasonTruncatedUDP:         "truncated_udp",
	ReasonBadUDPLength:         "bad_udp_length",
	ReasonTruncatedICMP:        "truncated_icmp",
}

// String returns the reason's snake_case name, such as "truncated_l2".
func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "reason_" + strconv.Itoa(int(r))
}

// Error implements error.
func (r Reason) Error() string { return "parse packet: " + r.String() }

// ReasonOf returns the Reason in err's chain, or ReasonNone if err is nil or
// holds no Reason.
func ReasonOf(err error) Reason {
	if r, ok := err.(Reason); ok {
		return r
	}
	var r Reason
	if errors.As(err, &r) {
		return r
	}
	return ReasonNone
}
