package main

import (
	"log/slog"
	"os"
	"strconv"

	"github.com/skylane/skylane/netif"
	"github.com/skylane/skylane/nexus"
	"github.com/skylane/skylane/nexus/control"
	"github.com/skylane/skylane/nexus/takeover"
)

// Hidden knobs of the takeover tests: a process that declares another
// state version (it must be refused), and one that dies at a step of the
// hand-over (the old nexus must serve on).
const (
	envStateVersion = "SKYLANE_TAKEOVER_STATE_VERSION"
	envDieAt        = "SKYLANE_TAKEOVER_DIE_AT"
)

// takeoverVersion is the state version this process speaks.
func takeoverVersion() int {
	if v, err := strconv.Atoi(os.Getenv(envStateVersion)); err == nil && v > 0 {
		return v
	}
	return takeover.StateVersion
}

// takeoverOptions are Take's options for a nexus with options no (the
// daemon's, as openNexus prepared them) and control servers made by
// newServer.
func takeoverOptions(no nexus.Options, newServer func(*nexus.Nexus) *control.Server, log *slog.Logger) takeover.Options {
	return takeover.Options{
		Nexus: func(netif.Link) nexus.Options {
			no.Logger = log
			return no
		},
		Server:  newServer,
		Version: takeoverVersion(),
		DieAt:   os.Getenv(envDieAt),
		Log:     log,
	}
}
