module github.com/skylane/skylane

go 1.26.8

require (
	github.com/gopacket/gopacket v1.7.7
	golang.org/x/sys v0.50.0
)
