package daemon

import "testing"

func TestUserspaceProcs(t *testing.T) {
	for _, tc := range []struct{ cpus, want int }{
		{1, 1},
		{2, 1},
		{3, 1},
		{4, 2},
		{16, 8},
	} {
		if got := userspaceProcs(tc.cpus); got != tc.want {
			t.Errorf("userspaceProcs(%d) = %d, want %d", tc.cpus, got, tc.want)
		}
	}
}
