package server

import (
	"context"
	"os"
	"time"
)

// stamp is what a poll compares to tell that a file changed.
type stamp struct {
	mod   time.Time
	size  int64
	mode  os.FileMode
	extra fileIDs // inode, device, owner
	ok    bool
}

func stampOf(path string) stamp {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}
	}
	return stamp{mod: fi.ModTime(), size: fi.Size(), mode: fi.Mode(), extra: idsOf(fi), ok: true}
}

// Watch polls paths every interval and calls onChange (from Watch's
// goroutine) when any of them changed (content, replacement, mode, owner:
// a chmod that makes a refused file loadable counts), and whenever a value arrives on poke
// (SIGHUP). It returns when ctx is done. Polling (four stats a second at the
// default) keeps the broker free of an fsnotify dependency and works the same
// on Linux and FreeBSD, including for files replaced by rename.
func Watch(ctx context.Context, paths []string, interval time.Duration, poke <-chan os.Signal, onChange func(reason string)) {
	last := make([]stamp, len(paths))
	for i, p := range paths {
		last[i] = stampOf(p)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-poke:
			for i, p := range paths {
				last[i] = stampOf(p)
			}
			onChange("SIGHUP")
		case <-t.C:
			changed := ""
			for i, p := range paths {
				if s := stampOf(p); s != last[i] {
					last[i] = s
					if changed == "" {
						changed = p + " changed"
					}
				}
			}
			if changed != "" {
				onChange(changed)
			}
		}
	}
}
