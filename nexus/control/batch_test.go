package control_test

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/skylane/skylane/control"
	"github.com/skylane/skylane/flow"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/packet"
)

// TestBatchRequests: a batch larger than control.MaxBatch is registered
// and torn down in a few requests, each key with its own outcome: one
// refused key leaves the others registered, and the errors unwrap to the
// flow package's and the nexus's sentinels.
func TestBatchRequests(t *testing.T) {
	n, path, _ := serve(t)
	s, err := control.Open(path, "app", control.OpenOptions{Advisories: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lis := packet.MakeKey(packet.ProtoTCP, netip.AddrPortFrom(addr4, 80), netip.AddrPort{}).Listener3()
	if _, err := s.Register(lis, flow.Listener3); err != nil {
		t.Fatal(err)
	}
	const good = 2*control.MaxBatch + 44
	var keys []packet.Key
	for i := range good {
		keys = append(keys, key(packet.ProtoTCP, "198.18.0.1:80", fmt.Sprintf("198.18.0.2:%d", 20000+i)))
	}
	bad := len(keys) / 2 // a local address the nexus does not hold
	keys = slices.Insert(keys, bad, key(packet.ProtoTCP, "198.18.0.9:80", "198.18.0.2:1"))
	fis, errs := s.RegisterBatch(keys, flow.Connected)
	ids := map[[16]byte]bool{}
	for i, err := range errs {
		if i == bad {
			if !errors.Is(err, flow.ErrAddressNotLocal) {
				t.Errorf("key %d (not local): %v, want flow.ErrAddressNotLocal", i, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
		if ids[fis[i].ID] {
			t.Fatalf("key %d: flow ID %x handed out twice", i, fis[i].ID)
		}
		ids[fis[i].ID] = true
	}
	if _, f := flows(t, n); f != good+1 {
		t.Fatalf("%d flows after the batch, want %d", f, good+1)
	}
	for i, err := range s.TeardownBatch(keys) {
		if i == bad {
			if !errors.Is(err, nexus.ErrNoFlow) {
				t.Errorf("teardown of the refused key: %v, want ErrNoFlow", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("teardown %d: %v", i, err)
		}
	}
	if _, f := flows(t, n); f != 1 {
		t.Fatalf("%d flows after the teardown, want the listener's 1", f)
	}
}

// TestBatchPolicy: the policy checks every key of a batch, counting the
// batch's own flows against max_flows; a batch's refusals are counted one
// by one and logged in one line.
func TestBatchPolicy(t *testing.T) {
	ps := servePolicy(t, testPolicy)
	web, err := ps.open(t, 65534, "web")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := web.Register(key(packet.ProtoTCP, "198.18.0.1:8080", "").Listener3(), flow.Listener3); err != nil {
		t.Fatal(err)
	}
	var keys []packet.Key
	for i := range 4 {
		keys = append(keys, key(packet.ProtoTCP, "198.18.0.1:8080", fmt.Sprintf("198.18.0.2:%d", 40000+i)))
	}
	_, errs := web.RegisterBatch(keys, flow.Connected)
	for i, err := range errs {
		if i < 2 && err != nil {
			t.Errorf("key %d, within max_flows = 3: %v", i, err)
		}
		if i >= 2 && (!errors.Is(err, control.ErrNotPermitted) || !strings.Contains(err.Error(), "max_flows is 3")) {
			t.Errorf("key %d, over max_flows = 3: %v, want ErrNotPermitted naming max_flows", i, err)
		}
	}
	if r := ps.srv.Refused(); r != 2 {
		t.Errorf("%d refusals counted, want 2", r)
	}
	if n := strings.Count(ps.log.String(), "msg=refused"); n != 1 {
		t.Errorf("%d refusal lines logged, want 1 for the batch:\n%s", n, ps.log)
	}
}
