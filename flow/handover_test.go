package flow

import (
	"encoding/json"
	"testing"
)

// TestRestore: flows saved from one table and restored in another keep
// their IDs, advisory slots and counters; the slots the old port had
// free are handed out first again, lowest first; a slot taken twice or
// outside the port's table is refused with nothing left behind.
func TestRestore(t *testing.T) {
	old := newTable(t, Options{AdvisorySlots: 8})
	var es []*Entry
	for i := range 5 {
		e, err := old.Register(Request{Port: 1, Key: conn(tcp, v4a, 8000, v4peer, uint16(40000+i)), Kind: Connected})
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
	es[0].CountIn(100, 0)
	old.Teardown(es[1]) // slot 1 free
	old.Teardown(es[3]) // slot 3 free
	var saved []Saved
	for _, e := range []*Entry{es[0], es[2], es[4]} {
		saved = append(saved, e.Save())
	}
	// Through JSON, as a takeover sends it.
	b, err := json.Marshal(saved)
	if err != nil {
		t.Fatal(err)
	}
	var got []Saved
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	nt := newTable(t, Options{AdvisorySlots: 8, PortTaken: func(uint8, uint16) bool { return true }})
	rs, err := nt.Restore(7, got)
	if err != nil {
		t.Fatalf("restore (a kernel socket on the port since must not matter): %v", err)
	}
	for i, e := range rs {
		if e.ID() != saved[i].ID || e.AdvisoryIndex() != saved[i].Advisory || e.Key() != saved[i].Key || e.Port() != 7 {
			t.Errorf("restored %d: id %x adv %d key %v port %d, saved %+v", i, e.ID(), e.AdvisoryIndex(), e.Key(), e.Port(), saved[i])
		}
		if nt.Lookup(&saved[i].Key) != e {
			t.Errorf("restored %d not found by its key", i)
		}
	}
	if rs[0].Counters().PacketsIn != 1 {
		t.Errorf("counters not restored: %+v", rs[0].Counters())
	}
	for _, want := range []uint32{1, 3, 5} {
		e, err := nt.Register(Request{Port: 7, Key: conn(tcp, v4a, 8000, v4peer, uint16(50000+want)), Kind: Connected})
		if err != nil {
			t.Fatal(err)
		}
		if e.AdvisoryIndex() != want {
			t.Errorf("new flow after restore got slot %d, want %d", e.AdvisoryIndex(), want)
		}
	}

	bad := newTable(t, Options{AdvisorySlots: 8})
	twice := []Saved{saved[0], saved[1]}
	twice[1].Advisory = twice[0].Advisory
	if _, err := bad.Restore(1, twice); err == nil {
		t.Error("a slot restored twice was accepted")
	}
	outside := []Saved{saved[0]}
	outside[0].Advisory = 8
	if _, err := bad.Restore(1, outside); err == nil {
		t.Error("a slot outside the table was accepted")
	}
	if bad.Len() != 0 {
		t.Errorf("failed restores left %d flows", bad.Len())
	}
}
