BEGIN TRANSACTION;
CREATE TABLE vdisk_extents ( vdisk_extent_no INT, vdisk_id INT, part_id INT, part_extent_no INT );
CREATE TABLE vdisk_part ( part_id INT, partition VARCHAR, extent_size INT );
CREATE TABLE vdisks ( vdisk_id INT, size INT, expires BOOLEAN, expiry_time TIMESTAMP );
INSERT INTO vdisk_part VALUES('2051','/dev/sda3','32768'); ATTACH DATABASE '/var/lib/xendisk/state.sqlite' AS live;
UPDATE live.extents SET dirty = 0;
COMMIT;
