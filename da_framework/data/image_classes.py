"""Class lists of the published image domain-adaptation datasets, in the order of their label ids.

The orders are those of the Transfer-Learning-Library (tllib, ``tllib/vision/datasets``), so label
ids agree with its image lists and published setups: Office-31 (Saenko et al., ECCV 2010; 31
classes, alphabetical), Office-Home (Venkateswara et al., CVPR 2017; 65 classes, the order of
tllib's image lists, *not* alphabetical), VisDA-2017 (Peng et al., 2017; 12 classes) and DomainNet
(Peng et al., ICCV 2019; 345 classes, the label ids of the official ``<domain>_train.txt`` lists).
The names are the class folder names of the datasets as distributed.
"""

from __future__ import annotations

OFFICE31_CLASSES: tuple[str, ...] = tuple(
    """
    back_pack bike bike_helmet bookcase bottle calculator desk_chair desk_lamp desktop_computer file_cabinet
    headphones keyboard laptop_computer letter_tray mobile_phone monitor mouse mug paper_notebook pen phone
    printer projector punchers ring_binder ruler scissors speaker stapler tape_dispenser trash_can
    """.split()
)

OFFICE_HOME_CLASSES: tuple[str, ...] = tuple(
    """
    Drill Exit_Sign Bottle Glasses Computer File_Cabinet Shelf Toys Sink Laptop Kettle Folder Keyboard
    Flipflops Pencil Bed Hammer ToothBrush Couch Bike Postit_Notes Mug Webcam Desk_Lamp Telephone Helmet
    Mouse Pen Monitor Mop Sneakers Notebook Backpack Alarm_Clock Push_Pin Paper_Clip Batteries Radio Fan
    Ruler Pan Screwdriver Trash_Can Printer Speaker Eraser Bucket Chair Calendar Calculator Flowers
    Lamp_Shade Spoon Candles Clipboards Scissors TV Curtains Fork Soda Table Knives Oven Refrigerator Marker
    """.split()
)

VISDA2017_CLASSES: tuple[str, ...] = tuple(
    "aeroplane bicycle bus car horse knife motorcycle person plant skateboard train truck".split()
)

DOMAINNET_CLASSES: tuple[str, ...] = tuple(
    """
    aircraft_carrier airplane alarm_clock ambulance angel animal_migration ant anvil apple arm asparagus axe
    backpack banana bandage barn baseball baseball_bat basket basketball bat bathtub beach bear beard bed bee
    belt bench bicycle binoculars bird birthday_cake blackberry blueberry book boomerang bottlecap bowtie
    bracelet brain bread bridge broccoli broom bucket bulldozer bus bush butterfly cactus cake calculator
    calendar camel camera camouflage campfire candle cannon canoe car carrot castle cat ceiling_fan cello
    cell_phone chair chandelier church circle clarinet clock cloud coffee_cup compass computer cookie cooler
    couch cow crab crayon crocodile crown cruise_ship cup diamond dishwasher diving_board dog dolphin donut
    door dragon dresser drill drums duck dumbbell ear elbow elephant envelope eraser eye eyeglasses face fan
    feather fence finger fire_hydrant fireplace firetruck fish flamingo flashlight flip_flops floor_lamp
    flower flying_saucer foot fork frog frying_pan garden garden_hose giraffe goatee golf_club grapes grass
    guitar hamburger hammer hand harp hat headphones hedgehog helicopter helmet hexagon hockey_puck
    hockey_stick horse hospital hot_air_balloon hot_dog hot_tub hourglass house house_plant hurricane
    ice_cream jacket jail kangaroo key keyboard knee knife ladder lantern laptop leaf leg light_bulb lighter
    lighthouse lightning line lion lipstick lobster lollipop mailbox map marker matches megaphone mermaid
    microphone microwave monkey moon mosquito motorbike mountain mouse moustache mouth mug mushroom nail
    necklace nose ocean octagon octopus onion oven owl paintbrush paint_can palm_tree panda pants paper_clip
    parachute parrot passport peanut pear peas pencil penguin piano pickup_truck picture_frame pig pillow
    pineapple pizza pliers police_car pond pool popsicle postcard potato power_outlet purse rabbit raccoon
    radio rain rainbow rake remote_control rhinoceros rifle river roller_coaster rollerskates sailboat
    sandwich saw saxophone school_bus scissors scorpion screwdriver sea_turtle see_saw shark sheep shoe
    shorts shovel sink skateboard skull skyscraper sleeping_bag smiley_face snail snake snorkel snowflake
    snowman soccer_ball sock speedboat spider spoon spreadsheet square squiggle squirrel stairs star steak
    stereo stethoscope stitches stop_sign stove strawberry streetlight string_bean submarine suitcase sun
    swan sweater swing_set sword syringe table teapot teddy-bear telephone television tennis_racquet tent
    The_Eiffel_Tower The_Great_Wall_of_China The_Mona_Lisa tiger toaster toe toilet tooth toothbrush
    toothpaste tornado tractor traffic_light train tree triangle trombone truck trumpet t-shirt umbrella
    underwear van vase violin washing_machine watermelon waterslide whale wheel windmill wine_bottle
    wine_glass wristwatch yoga zebra zigzag
    """.split()
)
