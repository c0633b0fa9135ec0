"""The address book behind the groups and contacts API: request and response models (`models`),
text cleaning (`text`), and the SQL of groups (`groups`) and contacts (`contacts`)."""
