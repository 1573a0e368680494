"""Hand-written grade-school maths problems in GSM8K's schema (``openai/gsm8k``, config ``main``).

Each row is ``{"question", "answer"}``; the answer is a rationale with ``<<a*b=c>>`` calculator annotations and a
final ``#### N`` line, exactly as in the dataset. Several rationales contain an intermediate number (or a ``= 10%``)
equal to the gold, so a grader that reads an earlier number instead of the ``#### N`` line is caught.
"""

GSM8K_PROBLEMS = [
    {
        "question": "Mia buys 4 notebooks for $3 each and a pen for $2. How much does she spend in dollars?",
        "answer": "The notebooks cost 4*3 = $<<4*3=12>>12.\nWith the pen she spends 12+2 = $<<12+2=14>>14.\n#### 14",
    },
    {
        "question": "A class has 30 students and 3 of them are absent today. What percent of the class is absent?",
        "answer": "The fraction absent is 3/30 = <<3/30=0.1>>0.1.\n"
        "As a percentage that is 0.1*100 = <<0.1*100=10>>10%.\n#### 10",
    },
    {
        "question": "A baker fills 12 trays with 24 cookies each. She sells all but 38 cookies. "
        "How many cookies does she sell?",
        "answer": "She bakes 12*24 = <<12*24=288>>288 cookies.\n"
        "She sells 288-38 = <<288-38=250>>250 cookies.\n#### 250",
    },
    {
        "question": "A workshop makes 617 chairs a week. How many chairs does it make in 2 weeks?",
        "answer": "In 2 weeks it makes 617*2 = <<617*2=1234>>1,234 chairs.\n#### 1,234",
    },
    {
        "question": "Leo's dinner costs $80 and he leaves a 15% tip. How much does he pay in total?",
        "answer": "The tip is 80*15/100 = $<<80*15/100=12>>12.\nHe pays 80+12 = $<<80+12=92>>92 in total.\n#### 92",
    },
    {
        "question": "A garden is 12 meters long and 9 meters wide. How many meters of fence go around it?",
        "answer": "One long side and one short side make 12+9 = <<12+9=21>>21 meters.\n"
        "All four sides make 2*21 = <<2*21=42>>42 meters.\n#### 42",
    },
    {
        "question": "At 6 am the temperature was 4 degrees. By noon it had dropped by 9 degrees. What was it at noon?",
        "answer": "At noon it was 4-9 = <<4-9=-5>>-5 degrees.\n#### -5",
    },
    {
        "question": "Sara runs 2.5 miles every day for 6 days. How many miles does she run?",
        "answer": "She runs 2.5*6 = <<2.5*6=15>>15 miles.\n#### 15",
    },
    {
        "question": "Ben reads 20 pages a day. His book has 80 pages. After 3 days, how many pages are left?",
        "answer": "In 3 days he reads 20*3 = <<20*3=60>>60 pages.\nHe has 80-60 = <<80-60=20>>20 pages left.\n#### 20",
    },
    {
        "question": "A jacket cost $40 last month and costs $36 now. By what percent did the price go down?",
        "answer": "The price fell by 40-36 = $<<40-36=4>>4.\n"
        "That is 4/40*100 = <<4/40*100=10>>10% of the old price.\n#### 10",
    },
    {
        "question": "Ali earns $15 an hour and works 7 hours. He then spends $25 on lunch. How much money is left?",
        "answer": "He earns 15*7 = $<<15*7=105>>105.\nAfter lunch he has 105-25 = $<<105-25=80>>80.\n#### 80",
    },
    {
        "question": "There are 48 students and a quarter of them wear glasses. How many do not wear glasses?",
        "answer": "48/4 = <<48/4=12>>12 students wear glasses.\nSo 48-12 = <<48-12=36>>36 do not.\n#### 36",
    },
    {
        "question": "Omar has 7 stickers and Lena has 5 times as many. How many stickers do they have together?",
        "answer": "Lena has 5*7 = <<5*7=35>>35 stickers.\nTogether they have 35+7 = <<35+7=42>>42 stickers.\n#### 42",
    },
    {
        "question": "A stadium has 45 sections of 250 seats. How many seats does it have?",
        "answer": "It has 45*250 = <<45*250=11250>>11,250 seats.\n#### 11250",
    },
    {
        "question": "Nora saves $6 a week. How many weeks does she need to save $54?",
        "answer": "She needs 54/6 = <<54/6=9>>9 weeks.\n#### 9",
    },
]

#: the gold answers the GSM8K loader must read from the rows above (last ``#### N`` line, no thousands commas)
GSM8K_GOLDS = ["14", "10", "250", "1234", "92", "42", "-5", "15", "20", "10", "80", "36", "42", "11250", "9"]
