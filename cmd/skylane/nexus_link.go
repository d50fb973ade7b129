package main

import (
	"fmt"
	"log/slog"
	"net"

	"github.com/vishvananda/netlink"

	"github.com/skylane/skylane/internal/syscalls"
)

// watchLink reports on gone when the interface with index is deleted or
// set down (its reason: "deleted", "set down"); a lost carrier is only
// logged, since the interface may come back by itself. index 0 (memif)
// watches nothing. stop ends the watch and waits for its goroutine.
func watchLink(index int, dev string, log *slog.Logger) (gone <-chan string, stop func(), err error) {
	out := make(chan string, 1)
	if index == 0 {
		return out, func() {}, nil
	}
	updates := make(chan netlink.LinkUpdate, 16)
	done := make(chan struct{})
	err = netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) {
			select {
			case <-done: // the socket closed by stop
			default:
				log.Warn("link watch", "dev", dev, "err", err)
			}
		},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("watch %s: %w", dev, err)
	}
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		// The state before the subscription: the link may have gone in
		// between.
		if l, err := netlink.LinkByIndex(index); err != nil {
			report(out, "deleted")
		} else if l.Attrs().Flags&net.FlagUp == 0 {
			report(out, "set down")
		}
		carrier := true
		for u := range updates { // closed once done is
			if int(u.Index) != index {
				continue
			}
			switch {
			case syscalls.LinkDeleted(u.Header.Type):
				report(out, "deleted")
			case !syscalls.LinkUp(u.Flags):
				// Deleting a device first sets it down: say which it was
				// if the kernel already knows.
				if _, err := netlink.LinkByIndex(index); err != nil {
					report(out, "deleted")
				} else {
					report(out, "set down")
				}
			case !syscalls.LinkCarrier(u.Flags) && carrier:
				carrier = false
				log.Warn("interface lost its carrier; waiting for it", "dev", dev)
			case syscalls.LinkCarrier(u.Flags) && !carrier:
				carrier = true
				log.Info("interface has its carrier again", "dev", dev)
			}
		}
	}()
	return out, func() { close(done); <-exited }, nil
}

// report sends why unless a reason is already waiting.
func report(out chan string, why string) {
	select {
	case out <- why:
	default:
	}
}
