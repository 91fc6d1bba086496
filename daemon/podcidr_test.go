package daemon

import (
	"slices"
	"strings"
	"testing"
)

func TestParsePodCIDRs(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    []string
		wantErr string // a part of the error; "" for none
	}{
		{in: "10.32.0.0/12", want: []string{"10.32.0.0/12"}},
		{in: "10.32.1.2/12", want: []string{"10.32.0.0/12"}},
		{in: "fd10:32::/48", want: []string{"fd10:32::/48"}},
		{in: "10.32.0.0/12,fd10:32::/48", want: []string{"10.32.0.0/12", "fd10:32::/48"}},
		{in: "fd10:32::/48, 10.32.0.0/12", want: []string{"10.32.0.0/12", "fd10:32::/48"}},
		{in: "10.32.0.0/12,10.64.0.0/12", wantErr: "two IPv4 ranges"},
		{in: "fd10:32::/48,fd10:33::/48", wantErr: "two IPv6 ranges"},
		{in: "10.32.0.0/12,fd10:32::/48,10.1.0.0/16", wantErr: "want one range, or two"},
		{in: "10.32.0.0/33", wantErr: "10.32.0.0/33"},
		{in: "10.32.0.0", wantErr: "no '/'"},
		{in: "", wantErr: "empty range"},
		{in: "10.32.0.0/12,", wantErr: "empty range"},
		{in: "::ffff:10.0.0.0/104", wantErr: "not a plain IPv4 or IPv6 prefix"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParsePodCIDRs(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParsePodCIDRs(%q) = %v, %v; want an error saying %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePodCIDRs(%q): %v", tc.in, err)
			}
			var s []string
			for _, p := range got {
				s = append(s, p.String())
			}
			if !slices.Equal(s, tc.want) {
				t.Errorf("ParsePodCIDRs(%q) = %v, want %v", tc.in, s, tc.want)
			}
		})
	}
}

func TestValidatePodCIDRs(t *testing.T) {
	for _, tc := range []struct {
		in      string
		wantErr string
	}{
		{in: DefaultPodCIDR},
		{in: "10.32.0.0/30"},
		{in: "10.32.0.0/31", wantErr: "too small: use /30"},
		{in: "10.32.0.0/16,fd10:32::/48"},
		{in: "10.32.0.0/16,fd10:32::/112"},
		{in: "10.32.0.0/16,fd10:32::/113", wantErr: "use /112 or larger for IPv6"},
		{in: "fd10:32::/48"},
		{in: "fd10:32::/127", wantErr: "too small: use /126"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			ps, err := ParsePodCIDRs(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			c := DefaultConfig()
			c.NodeName = "n1"
			c.SetPodCIDRs(ps)
			err = c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Validate = %v, want an error saying %q", err, tc.wantErr)
			}
			if err == nil && !slices.Equal(c.PodCIDRs(), ps) {
				t.Errorf("PodCIDRs() = %v, want %v", c.PodCIDRs(), ps)
			}
		})
	}
}

// FuzzParsePodCIDRs checks that whatever the parser accepts is one or two
// masked prefixes of distinct families, IPv4 first, and that it parses its
// own output back to the same.
func FuzzParsePodCIDRs(f *testing.F) {
	for _, s := range []string{"10.32.0.0/12", "10.32.0.0/12,fd10:32::/48", "fd10::/64,10.0.0.0/8", ",", "1.2.3.4/40"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ps, err := ParsePodCIDRs(s)
		if err != nil {
			return
		}
		if len(ps) == 0 || len(ps) > 2 {
			t.Fatalf("ParsePodCIDRs(%q) = %v: want one or two ranges", s, ps)
		}
		var strs []string
		for _, p := range ps {
			if p != p.Masked() {
				t.Fatalf("ParsePodCIDRs(%q) = %v: %v not masked", s, ps, p)
			}
			strs = append(strs, p.String())
		}
		if len(ps) == 2 && (!ps[0].Addr().Is4() || !ps[1].Addr().Is6()) {
			t.Fatalf("ParsePodCIDRs(%q) = %v: want IPv4 then IPv6", s, ps)
		}
		again, err := ParsePodCIDRs(strings.Join(strs, ","))
		if err != nil || !slices.Equal(again, ps) {
			t.Fatalf("ParsePodCIDRs(%q) = %v, but its output parses to %v, %v", s, ps, again, err)
		}
	})
}
