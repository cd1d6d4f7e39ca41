BEGIN TRANSACTION;
CREATE TABLE vdisk_extents
 ( vdisk_extent_no INT,
 vdisk_id INT,
 part_id INT,
 part_extent_no INT );
INSERT INTO vdisk_extents VALUES('0','1','2065','1');
INSERT INTO vdisk_extents VALUES('1','1','2051','2');
INSERT INTO vdisk_extents VALUES('2','1','2065','0');
INSERT INTO vdisk_extents VALUES('0','2','2051','1');
INSERT INTO vdisk_extents VALUES('0','0','2051','0');
INSERT INTO vdisk_extents VALUES('1','0','2051','3');
INSERT INTO vdisk_extents VALUES('2','0','2065','2');
CREATE TABLE vdisk_part
 ( part_id INT,
 partition VARCHAR,
 extent_size INT );
INSERT INTO vdisk_part VALUES('2051','/dev/sda3','32768');
INSERT INTO vdisk_part VALUES('2065','/dev/sdb1','65536');
CREATE TABLE vdisks
 ( vdisk_id INT,
 size INT,
 expires BOOLEAN,
 expiry_time TIMESTAMP );
INSERT INTO vdisks VALUES('0','0','1','2004-03-01 10:00:00');
INSERT INTO vdisks VALUES('1','163840','0',NULL);
INSERT INTO vdisks VALUES('2','32768','1','2004-05-01 00:00:00');
COMMIT;
