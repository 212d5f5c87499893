# On erase ($1 = 0, not on upgrade), removes the link post_install made.
if [ "$1" -eq 0 ] && [ ! -L /sbin ] && [ "$(readlink /sbin/mount.s3vol)" = /usr/sbin/mount.s3vol ]; then
    rm -f /sbin/mount.s3vol
fi
