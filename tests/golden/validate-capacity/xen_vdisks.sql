BEGIN TRANSACTION;
CREATE TABLE vdisk_extents
 ( vdisk_extent_no INT,
 vdisk_id INT,
 part_id INT,
 part_extent_no INT );
INSERT INTO vdisk_extents VALUES('0','0','2051','0');
INSERT INTO vdisk_extents VALUES('1','0','2051','1');
INSERT INTO vdisk_extents VALUES('2','0','2051','2');
INSERT INTO vdisk_extents VALUES('3','0','2051','3');
INSERT INTO vdisk_extents VALUES('0','1','2051','7');
INSERT INTO vdisk_extents VALUES('1','1','2051','6');
INSERT INTO vdisk_extents VALUES('0','2','2051','5');
INSERT INTO vdisk_extents VALUES('8','0','2065','0');
INSERT INTO vdisk_extents VALUES('9','0','2065','1');
INSERT INTO vdisk_extents VALUES('0','3','2065','3');
INSERT INTO vdisk_extents VALUES('1','3','2065','2');
INSERT INTO vdisk_extents VALUES('2','3','2051','4');
INSERT INTO vdisk_extents VALUES('12','0','772','0');
INSERT INTO vdisk_extents VALUES('0','4','772','3');
INSERT INTO vdisk_extents VALUES('0','5','772','2');
INSERT INTO vdisk_extents VALUES('1','5','772','1');
CREATE TABLE vdisk_part
 ( part_id INT,
 partition VARCHAR,
 extent_size INT );
INSERT INTO vdisk_part VALUES('2051','/dev/sda3','32768');
INSERT INTO vdisk_part VALUES('2065','/dev/sdb1','32768');
INSERT INTO vdisk_part VALUES('772','/dev/hda4','65536');
CREATE TABLE vdisks
 ( vdisk_id INT,
 size INT,
 expires BOOLEAN,
 expiry_time TIMESTAMP );
INSERT INTO vdisks VALUES('0','0','1','2004-03-01 10:00:00');
INSERT INTO vdisks VALUES('1','65536','0',NULL);
INSERT INTO vdisks VALUES('2','32768','1','2004-05-01 00:00:00');
INSERT INTO vdisks VALUES('3','98304','1','2030-01-01 00:00:00');
INSERT INTO vdisks VALUES('4','65536','1','2004-06-01 12:30:00');
INSERT INTO vdisks VALUES('5','100000','0',NULL);
COMMIT;
