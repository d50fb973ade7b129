package main

import "testing"

// TestDemoHTTPS runs the demo's exchange and checks its report.
func TestDemoHTTPS(t *testing.T) {
	rep, err := demoHTTPS(4 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Status != 200 || rep.Bytes != 4<<20 || !rep.DigestOK || !rep.IPv6OK || rep.TLSVersion == "" {
		t.Fatalf("exchange failed: %+v", rep)
	}
	if rep.ServerGSOPackets == 0 || rep.ServerCut == 0 || rep.ServerSegments <= rep.ServerCut || rep.ClientSuperPackets == 0 || rep.ServerFlowsAuto == 0 || rep.TxDrops != 0 {
		t.Fatalf("figures: %+v", rep)
	}
	t.Logf("%+v", rep)
}
