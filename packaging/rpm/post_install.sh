# mount(8) looks for /sbin/mount.s3vol. With merged /usr (/sbin -> usr/sbin) the packaged
# /usr/sbin/mount.s3vol is that file; on a system where /sbin is its own directory, link it.
if [ ! -L /sbin ] && [ ! -e /sbin/mount.s3vol ] && [ ! -L /sbin/mount.s3vol ]; then
    ln -s /usr/sbin/mount.s3vol /sbin/mount.s3vol
fi
