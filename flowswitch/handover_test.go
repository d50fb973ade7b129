package flowswitch

import (
	"encoding/json"
	"testing"

	"github.com/skylane/skylane/packet"
)

// TestStatsCarried: the switch's own counters survive JSON (parse drops
// by reason name) and RestoreStats in another switch; the derived ones
// are left to their sources.
func TestStatsCarried(t *testing.T) {
	var st Stats
	st.Packets, st.NoFlow, st.TxDrops.Length = 7, 3, 2
	st.ParseDrops[packet.Reason(1)] = 5
	st.FlowLimits.PortFull = 9 // the table's: not carried
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	var got Stats
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.ParseDrops != st.ParseDrops || got.TxDrops != st.TxDrops || got.Packets != 7 {
		t.Fatalf("through JSON: %+v, want %+v", got, st)
	}
	s := &Switch{}
	s.RestoreStats(got)
	if saved := s.SaveStats(); saved.Packets != 7 || saved.NoFlow != 3 || saved.ParseDrops != st.ParseDrops || saved.FlowLimits.PortFull != 0 {
		t.Errorf("restored %+v", saved)
	}
}
