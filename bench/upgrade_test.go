package bench

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/skylane/skylane/internal/nettest"
)

// TestUpgradeScenario runs the upgrade rows with two replacements of each
// kind, as root, with a skylane binary built for it, and checks they were
// measured: lower is better, p50 within max, the old nexus frozen for a
// measured time.
func TestUpgradeScenario(t *testing.T) {
	nettest.RequirePriv(t)
	bin := filepath.Join(t.TempDir(), "skylane")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/skylane/skylane/cmd/skylane").CombinedOutput(); err != nil {
		t.Fatalf("build skylane: %v\n%s", err, out)
	}
	rep, err := runUpgradeWith(Config{Duration: 300 * time.Millisecond, Rounds: 1}, bin, 2)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Scenario != "upgrade" || len(rep.Results) != 2 {
		t.Fatalf("report %+v", rep)
	}
	for i, name := range []string{upgradeBlackoutRow, upgradeBulkRow} {
		r := rep.Results[i]
		if r.Name != name || r.Unit != "ms" || !r.LowerIsBetter || r.Value <= 0 || r.BaselineValue <= 0 || r.Ratio <= 0 {
			t.Fatalf("row not measured: %+v", r)
		}
		if r.Extra["max_ms"].(float64) < r.Extra["p50_ms"].(float64) {
			t.Errorf("%s: max below p50: %v", name, r.Extra)
		}
		t.Logf("%s: %.1f ms vs %.1f ms (%s), ratio %.2f, %v", r.Name, r.Value, r.BaselineValue, r.BaselineName, r.Ratio, r.Extra)
	}
	if f := rep.Results[0].Extra["frozen_p50_ms"].(float64); f < 0 {
		t.Errorf("no freeze time logged by the new nexus: %v", rep.Results[0].Extra)
	}
}
