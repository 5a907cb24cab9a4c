package bgp

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func validDesired() Desired {
	return Desired{
		LocalASN:        65010,
		RouterID:        netip.MustParseAddr("198.18.0.2"),
		GracefulRestart: GracefulRestart{RestartTime: 120 * time.Second},
		Peers: []Peer{
			{Address: netip.MustParseAddr("198.18.0.1"), ASN: 65000},
			{Address: netip.MustParseAddr("fd18::1"), ASN: 65010, Password: "s3cret", HoldTime: 9 * time.Second, Keepalive: 3 * time.Second},
		},
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")},
		Prefixes: []Prefix{
			{CIDR: netip.MustParsePrefix("10.244.1.0/24")},
			{CIDR: netip.MustParsePrefix("fd00:244:1::/64"), Communities: []Community{65000<<16 | 100}},
		},
	}
}

func TestValidateRejectsBadInputNamingTheField(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Desired)
		field  string
	}{
		{"zero local ASN with peers", func(d *Desired) { d.LocalASN = 0 }, "localASN"},
		{"AS_TRANS local ASN", func(d *Desired) { d.LocalASN = 23456 }, "localASN"},
		{"reserved local ASN", func(d *Desired) { d.LocalASN = 4294967295 }, "localASN"},
		{"missing router ID", func(d *Desired) { d.RouterID = netip.Addr{} }, "routerID"},
		{"IPv6 router ID", func(d *Desired) { d.RouterID = netip.MustParseAddr("fd18::2") }, "routerID"},
		{"unspecified router ID", func(d *Desired) { d.RouterID = netip.MustParseAddr("0.0.0.0") }, "routerID"},
		{"missing peer address", func(d *Desired) { d.Peers[0].Address = netip.Addr{} }, "peers[0].address"},
		{"multicast peer address", func(d *Desired) { d.Peers[0].Address = netip.MustParseAddr("224.0.0.5") }, "peers[0].address"},
		{"duplicate peer", func(d *Desired) { d.Peers[1].Address = d.Peers[0].Address }, "peers[1].address"},
		{"zero peer ASN", func(d *Desired) { d.Peers[1].ASN = 0 }, "peers[1].asn"},
		{"long MD5 key", func(d *Desired) { d.Peers[0].Password = strings.Repeat("k", 81) }, "peers[0].password"},
		{"hold time below 3s", func(d *Desired) { d.Peers[0].HoldTime = 2 * time.Second }, "peers[0].holdTime"},
		{"keepalive not below hold", func(d *Desired) { d.Peers[1].Keepalive = 9 * time.Second }, "peers[1].keepalive"},
		{"restart time over 4095s", func(d *Desired) { d.GracefulRestart.RestartTime = 4096 * time.Second }, "gracefulRestart.restartTime"},
		{"prefix outside pod CIDR", func(d *Desired) { d.Prefixes[0].CIDR = netip.MustParsePrefix("10.99.0.0/24") }, "prefixes[0].cidr"},
		{"prefix wider than pod CIDR", func(d *Desired) { d.Prefixes[0].CIDR = netip.MustParsePrefix("10.244.0.0/16") }, "prefixes[0].cidr"},
		{"prefix with host bits", func(d *Desired) { d.Prefixes[0].CIDR = netip.MustParsePrefix("10.244.1.7/24") }, "prefixes[0].cidr"},
		{"duplicate prefix", func(d *Desired) { d.Prefixes[1] = d.Prefixes[0] }, "prefixes[1].cidr"},
		{"pod CIDR with host bits", func(d *Desired) { d.PodCIDRs[0] = netip.MustParsePrefix("10.244.1.1/24") }, "podCIDRs[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := validDesired()
			tt.mutate(&d)
			err := d.Validate()
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate() = %v, want an ErrInvalid", err)
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Fatalf("Validate() = %v, want first field %q", err, tt.field)
			}
		})
	}
}

func TestValidateAcceptsValidAndOffStates(t *testing.T) {
	for name, d := range map[string]Desired{"valid": validDesired(), "off": {}} {
		if err := d.Validate(); err != nil {
			t.Errorf("%s: Validate() = %v", name, err)
		}
	}
}

func TestValidateNeverEchoesThePassword(t *testing.T) {
	d := validDesired()
	d.Peers[0].Password = strings.Repeat("topsecret", 10)
	if err := d.Validate(); err == nil || strings.Contains(err.Error(), "topsecret") {
		t.Fatalf("Validate() = %v; want an error without the key", err)
	}
}

func TestParseCommunities(t *testing.T) {
	tests := []struct {
		in      string
		want    Community
		wantErr bool
	}{
		{"65000:666", 65000<<16 | 666, false},
		{"0:0", 0, false},
		{"65535:65535", 0xffffffff, false},
		{"65536:1", 0, true},
		{"65000", 0, true},
		{"a:b", 0, true},
		{"1:2:3", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseCommunity(tt.in)
		if (err != nil) != tt.wantErr || (!tt.wantErr && got != tt.want) {
			t.Errorf("ParseCommunity(%q) = %v, %v", tt.in, got, err)
		}
		if !tt.wantErr && got.String() != tt.in {
			t.Errorf("Community(%q).String() = %q", tt.in, got.String())
		}
	}
	l, err := ParseLargeCommunity("4200000000:1:2")
	if err != nil || l != (LargeCommunity{Global: 4200000000, Local1: 1, Local2: 2}) || l.String() != "4200000000:1:2" {
		t.Errorf("ParseLargeCommunity = %v, %v", l, err)
	}
	if _, err := ParseLargeCommunity("1:2"); err == nil {
		t.Error("ParseLargeCommunity(1:2) accepted")
	}
}

func FuzzParseCommunity(f *testing.F) {
	for _, s := range []string{"65000:666", "0:0", "65536:1", ":", "1:2:3", "-1:5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCommunity(s)
		if err != nil {
			return
		}
		back, err := ParseCommunity(c.String())
		if err != nil || back != c {
			t.Fatalf("round trip of %q: %v %v", s, back, err)
		}
	})
}

func FuzzParseLargeCommunity(f *testing.F) {
	for _, s := range []string{"1:2:3", "4294967295:0:0", "1:2", "a:b:c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLargeCommunity(s)
		if err != nil {
			return
		}
		back, err := ParseLargeCommunity(l.String())
		if err != nil || back != l {
			t.Fatalf("round trip of %q: %v %v", s, back, err)
		}
	})
}
