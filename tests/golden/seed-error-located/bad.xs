/local = ""   (n0)
/local/domain = ""   (n0)
/local/domain/3/name = "web\q01"   (n0,r3)
