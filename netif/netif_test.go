package netif_test

import (
	"testing"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/packet"
)

func TestMaxFrameLen(t *testing.T) {
	for _, tc := range []struct {
		mtu  int
		lt   packet.LinkType
		want int
	}{
		{1500, packet.Ethernet, 1518}, // 14-byte header + one 802.1Q tag
		{1500, packet.RawIP, 1500},    // TUN: the IP header comes first
		{65535, packet.Ethernet, 65553},
		{1500, 0, 1500}, // unknown framing adds nothing
	} {
		if got := netif.MaxFrameLen(tc.mtu, tc.lt); got != tc.want {
			t.Errorf("MaxFrameLen(%d, %d) = %d, want %d", tc.mtu, tc.lt, got, tc.want)
		}
	}
}
