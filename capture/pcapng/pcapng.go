// Package pcapng writes captured frames (capture.Record) as pcapng, with
// gopacket's pcapgo: one interface per capture point and link type, named
// after the point ("device-rx", "drop-tx", ...), each packet with its
// direction in epb_flags (inbound: the nexus received it; outbound: it
// sent it) and a comment naming its app ("app=web-3") and, at a drop
// point, its drop reason ("drop=src_addr"): tshark shows them as
// frame.comment, Wireshark in the packet's comments.
//
// Invariant: every record written is one enhanced packet block on the
// interface of its point (interface i is capture.Point i, all written
// with the section header, so a streamed capture is valid from its start).
package pcapng

import (
	"fmt"
	"io"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/skylane/skylane/capture"
	"github.com/skylane/skylane/packet"
)

// Writer writes records as pcapng. Not safe for concurrent use.
type Writer struct {
	w       *pcapgo.NgWriter
	comment []string // scratch
	flags   pcapgo.NgEpbFlags
}

// LinkType returns the pcapng link type of frames of lt.
func LinkType(lt packet.LinkType) layers.LinkType {
	if lt == packet.RawIP {
		return layers.LinkTypeRaw
	}
	return layers.LinkTypeEthernet
}

// PointLink returns the link type of frames at point p of a nexus whose
// device is of link type dev: the app points and the transmit drops carry
// IP packets (an app sends and receives no L2 header), the others frames
// as the device has them.
func PointLink(p capture.Point, dev packet.LinkType) packet.LinkType {
	switch p {
	case capture.AppRx, capture.AppTx, capture.DropTx:
		return packet.RawIP
	}
	return dev
}

// NewWriter writes a pcapng section header to w and one interface per
// capture point, interface i for capture.Point i, for a nexus whose
// device is of link type dev. snaplen is the capture's.
func NewWriter(w io.Writer, dev packet.LinkType, snaplen int) (*Writer, error) {
	intf := func(p capture.Point) pcapgo.NgInterface {
		return pcapgo.NgInterface{
			Name: p.String(), Description: "skylane nexus capture point " + p.String(),
			LinkType: LinkType(PointLink(p, dev)), SnapLength: uint32(snaplen),
			TimestampResolution: 9, // ns: NgWriter writes UnixNano
		}
	}
	ng, err := pcapgo.NewNgWriterInterface(w, intf(0),
		pcapgo.NgWriterOptions{SectionInfo: pcapgo.NgSectionInfo{Application: "skylane capture"}})
	if err != nil {
		return nil, fmt.Errorf("pcapng: %w", err)
	}
	for p := capture.Point(1); p < capture.NumPoints; p++ {
		if _, err := ng.AddInterface(intf(p)); err != nil {
			return nil, fmt.Errorf("pcapng: interface %s: %w", p, err)
		}
	}
	return &Writer{w: ng}, nil
}

// Write writes one record.
func (w *Writer) Write(rec *capture.Record) error {
	if rec.Point >= capture.NumPoints {
		return fmt.Errorf("pcapng: capture point %d out of range", rec.Point)
	}
	w.comment = w.comment[:0]
	if rec.App != "" {
		w.comment = append(w.comment, "app="+rec.App)
	}
	if rec.Reason != "" {
		w.comment = append(w.comment, "drop="+rec.Reason)
	}
	w.flags.Direction = pcapgo.NgEpbFlagDirectionOutbound
	if rec.Point.Inbound() {
		w.flags.Direction = pcapgo.NgEpbFlagDirectionInbound
	}
	ci := gopacket.CaptureInfo{Timestamp: time.Unix(0, rec.Time), CaptureLength: len(rec.Data),
		Length: max(rec.Len, len(rec.Data)), InterfaceIndex: int(rec.Point)}
	if err := w.w.WritePacketWithOptions(ci, rec.Data, pcapgo.NgPacketOptions{Comments: w.comment, Flags: &w.flags}); err != nil {
		return fmt.Errorf("pcapng: %w", err)
	}
	return nil
}

// Flush writes what the writer buffers to the underlying writer: call it
// after each batch when streaming, and before closing a file.
func (w *Writer) Flush() error { return w.w.Flush() }
